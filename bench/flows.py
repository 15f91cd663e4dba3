"""Flow throughput: a dense (HINT-style) block against a plain coupling stack of the same parameter
count, test images/s of FlowDetector as a function of n_views, peak RSS. One thread.

    OMP_NUM_THREADS=1 python bench/flows.py                 # the cdflow_cpu sizes (1296 features, 256 px)
    OMP_NUM_THREADS=1 python bench/flows.py --views 1 2 4 8 --image-size 128
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from anomaly.models.flow import FlowDetector
from anomaly.nn.flows import Flow


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def throughput(flow: Flow, dim: int, batch: int, repeats: int) -> float:
    """Samples per second of forward + backward of the NLL."""
    x = torch.randn(batch, dim)
    flow.nll(x).mean().backward()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        flow.zero_grad()
        flow.nll(x).mean().backward()
    return batch * repeats / (time.perf_counter() - start)


def plain_matching(dim: int, target: int, hidden_layers: int) -> Flow:
    """A plain stack whose parameter count is closest to ``target``: search the subnet width."""
    best = None
    for n_blocks in (2, 3, 4, 6, 8):
        for width in range(32, 4097, 32):
            flow = Flow(dim, "plain", n_blocks, [width] * hidden_layers, clamp=3.0)
            gap = abs(count(flow) - target)
            if best is None or gap < best[0]:
                best = (gap, n_blocks, width)
            if count(flow) > target:
                break
    return Flow(dim, "plain", best[1], [best[2]] * hidden_layers, clamp=3.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=1296)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--views", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--cells", type=int, default=1, help="model.cells of the test model (CPU presets: 4)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    dense = Flow(args.dim, "dense", 3, [args.width] * 2, clamp=2.0, depth=args.depth)
    plain = plain_matching(args.dim, count(dense), 2)
    print(f"flow forward+backward, {args.dim} features, batch {args.batch}:")
    for name, flow in (("dense 3 blocks", dense), (f"plain {len(plain.blocks) // 2} blocks", plain)):
        width = next(m.out_features for m in flow.modules() if isinstance(m, torch.nn.Linear))
        print(f"  {name:16s} width {width:5d}  {count(flow) / 1e6:6.2f} M params  "
              f"{throughput(flow, args.dim, args.batch, args.repeats):8.0f} samples/s")

    side = args.image_size
    backbone = {"_target_": "anomaly.nn.backbone.FeatureExtractor", "name": "efficientnet_lite0",
                "layers": ["blocks.4", "blocks.6"], "weights": "none"}
    images = torch.randn(args.images, 3, side, side)
    print(f"test (score + gradient map), {args.images} images of {side} px, scales {side}/{side * 3 // 4}/{side // 2}, "
          f"cells {args.cells}:")
    for n_views in args.views:
        model = FlowDetector(backbone, kind="dense", n_blocks=3, hidden=[args.width] * 2, depth=args.depth,
                             scales=[side, side * 3 // 4, side // 2], n_views=n_views, cells=args.cells).eval()
        with torch.inference_mode():
            model(images[:1])
            start = time.perf_counter()
            model(images)
        print(f"  n_views {n_views:3d}  {args.images / (time.perf_counter() - start):7.2f} images/s")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()

"""Time and peak memory of every metric on MVTec-test-sized input, against anomalib and torchmetrics.

Usage: ``python bench/metrics.py [--images 1725] [--size 256] [--only SUBSTRING ...]``

Each row runs in a fresh subprocess, so its peak RSS (``ru_maxrss``) is its own; time counts only
``update`` and ``compute`` (the synthetic maps are generated batch by batch, outside the timer, and
never held all at once). The ``data only`` row is the floor every row shares: the interpreter,
torch and one batch. Data: smooth noise maps with elliptic defect blobs, 73 % anomalous images (the
MVTec AD test ratio), about 10 % anomalous pixels, 15 categories of equal size.

anomalib is compared from ``.bench-deps`` (never installed into ``.venv``); see ``ANOMALIB_INSTALL``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
BENCH_DEPS = REPO / ".bench-deps"
ANOMALIB_INSTALL = "make bench-deps"  # installs anomalib into .bench-deps/ (never into .venv)
METRICS = ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro")
ANOMALOUS_IMAGES = 1258 / 1725


# -- data ------------------------------------------------------------------------------------------
def batches(args: argparse.Namespace) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Deterministic batches ``(categories, anomaly_map B×1×H×W, score B, mask B×1×H×W, label B)``."""
    size = args.size
    for start in range(0, args.images, args.batch):
        rng = np.random.default_rng([args.seed, start])
        count = min(args.batch, args.images - start)
        maps = np.empty((count, 1, size, size), dtype=np.float32)
        masks = np.zeros((count, 1, size, size), dtype=np.float32)
        for i in range(count):
            mask = np.zeros((size, size), dtype=np.uint8)
            if rng.random() < ANOMALOUS_IMAGES:
                for _ in range(rng.integers(1, 4)):
                    center = tuple(int(c) for c in rng.integers(0, size, 2))
                    axes = tuple(int(a) for a in rng.integers(size // 16, size // 4 + size // 32, 2))
                    cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
            coarse = rng.standard_normal((size // 16, size // 16)).astype(np.float32)
            smooth = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
            signal = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigmaX=size / 64)
            fine = rng.standard_normal((size, size)).astype(np.float32)
            maps[i, 0] = 0.5 * smooth + 0.3 * fine + 1.6 * signal
            masks[i, 0] = mask
        categories = [f"cat{(start + i) * args.categories // args.images:02d}" for i in range(count)]
        anomaly_map, mask = torch.from_numpy(maps), torch.from_numpy(masks)
        yield categories, anomaly_map, anomaly_map.flatten(1).amax(1), mask, (mask.flatten(1).amax(1) > 0).long()


def category_names(args: argparse.Namespace) -> list[str]:
    return [f"cat{i:02d}" for i in range(args.categories)]


# -- jobs (each runs in its own process) -----------------------------------------------------------
def run_job(job: str, args: argparse.Namespace) -> dict[str, object]:
    """Run one job; returns its time (update + compute), value and this process's peak RSS."""
    torch.set_num_threads(args.threads)
    kind, _, rest = job.partition(":")
    update, compute = _job(kind, rest, args)
    elapsed, floor = 0.0, None
    for categories, anomaly_map, score, mask, label in batches(args):
        floor = floor or _rss_mib()  # libraries, metric and one batch: what every row pays
        start = time.perf_counter()
        update(categories, anomaly_map, score, mask, label)
        elapsed += time.perf_counter() - start
    start = time.perf_counter()
    value = compute()
    elapsed += time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"time": elapsed, "rss": peak, "floor": floor, "value": value}


def _rss_mib() -> float:
    """Current resident set size (``VmRSS``) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _job(kind: str, rest: str, args: argparse.Namespace):  # noqa: ANN202 - a pair of closures
    if kind == "data":
        import anomaly.metrics  # noqa: F401 - the same libraries as our rows

        return (lambda *_: None), (lambda: None)
    if kind == "ours":  # the collection the base module uses: per category, mean and pooled
        mode, _, names = rest.partition(":")
        from anomaly.metrics import AnomalyMetrics

        metrics = METRICS if names == "all" else (names,)
        collection = AnomalyMetrics(category_names(args), metrics=metrics, mode=mode, bins=args.bins)

        def compute() -> dict[str, float | None]:
            results = collection.compute()
            return {"pooled": results["pooled"], "mean": results["mean"],
                    "max_bound": max(b for g in collection.error_bounds.values() for b in g.values())}

        return collection.update, compute
    if kind == "single":  # one curve over all pixels, like the two baselines below
        from anomaly.metrics import PixelAUPRO, PixelAUROC

        metric = {"pixel_aupro": PixelAUPRO, "pixel_auroc": PixelAUROC}[rest]()
        return (lambda _c, m, _s, k, _l: metric.update(m, k)), (lambda: float(metric.compute()))
    if kind == "anomalib":
        sys.path.append(str(BENCH_DEPS))
        from anomalib.metrics.aupro import _AUPRO

        aupro = _AUPRO(fpr_limit=0.3)
        return (lambda _c, m, _s, k, _l: aupro.update(m[:, 0], k[:, 0])), (lambda: float(aupro.compute()))
    if kind == "torchmetrics":
        from torchmetrics.classification import BinaryAUROC

        auroc = BinaryAUROC(thresholds=None)
        return (lambda _c, m, _s, k, _l: auroc.update(m.flatten(), k.flatten().to(torch.uint8))), (
            lambda: float(auroc.compute()))
    raise ValueError(f"unknown job {kind}")


# -- driver ----------------------------------------------------------------------------------------
def rows(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(label, job) of every row, in print order."""
    out = [("data only (floor)", "data")]
    for mode in ("exact", "binned"):
        out += [(f"{name} [{mode}]", f"ours:{mode}:{name}") for name in METRICS]
        out.append((f"all seven [{mode}]", f"ours:{mode}:all"))
    out += [
        ("ours PixelAUPRO, one curve [exact]", "single:pixel_aupro"),
        ("anomalib 2.7.0 AUPRO, one curve", "anomalib"),
        ("ours PixelAUROC, one curve [exact]", "single:pixel_auroc"),
        ("torchmetrics BinaryAUROC, one curve", "torchmetrics"),
    ]
    return [r for r in out if not args.only or any(s in r[0] or s in r[1] for s in args.only)]


def anomalib_available() -> bool:
    return (BENCH_DEPS / "anomalib").is_dir()


def describe(args: argparse.Namespace) -> str:
    pixels = anomalous = images = bad = 0
    for _, _, _, mask, label in batches(args):
        pixels, anomalous = pixels + mask.numel(), anomalous + int(mask.sum())
        images, bad = images + len(label), bad + int(label.sum())
    return (f"{images} maps of {args.size}x{args.size} ({pixels / 1e6:.0f} M pixels, {anomalous / pixels:.1%} anomalous), "
            f"{bad} anomalous images, {args.categories} categories, batch {args.batch}, bins {args.bins}, "
            f"torch threads {args.threads}, median of {args.repeat} run(s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1725)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--categories", type=int, default=15)
    parser.add_argument("--bins", type=int, default=65_536)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of every row (1: on a shared machine OpenMP threads wait on each other)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run of a row")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row (the median time is printed)")
    parser.add_argument("--only", nargs="*", default=[], help="rows whose label or job contains one of these")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        print(json.dumps(run_job(args.job, args)))
        return

    print(describe(args))
    forwarded = [f"--{k}={getattr(args, k)}" for k in ("images", "size", "batch", "categories", "bins", "seed", "threads")]
    selected = rows(args)
    runs: dict[str, list[dict]] = {job: [] for _, job in selected}
    failures: dict[str, str] = {}
    if not anomalib_available():
        failures["anomalib"] = f"anomalib not installed: run {ANOMALIB_INSTALL}"
    for round_ in range(args.repeat):  # rounds over all rows, so load changes hit every row alike
        for label, job in selected:
            if job not in failures:
                print(f"[{round_ + 1}/{args.repeat}] {label}", file=sys.stderr, flush=True)
                outcome = _run(job, forwarded, args.timeout)
                if isinstance(outcome, str):
                    failures[job] = outcome
                else:
                    runs[job].append(outcome)
    print(f"{'metric':40s} {'time s':>8s} {'peak RSS MiB':>13s} {'above floor':>12s}  value")
    measured: dict[str, dict] = {}
    for label, job in selected:
        if job in failures:
            print(f"{label:40s} {failures[job]}")
            continue
        ordered = sorted(runs[job], key=lambda r: r["time"])  # the median time, the largest RSS
        result = measured[job] = {**ordered[len(ordered) // 2], "rss": max(r["rss"] for r in ordered)}
        above = result["rss"] - result["floor"]
        print(f"{label:40s} {result['time']:8.2f} {result['rss']:13.0f} {above:12.0f}  {_value(result['value'])}")
    for ours, theirs in (("single:pixel_aupro", "anomalib"), ("single:pixel_auroc", "torchmetrics")):
        if ours in measured and theirs in measured:
            a, b = measured[ours], measured[theirs]
            print(f"{ours} vs {theirs}: {b['time'] / a['time']:.1f}x faster, "
                  f"{(b['rss'] - b['floor']) / (a['rss'] - a['floor']):.1f}x less memory above the floor")


def _run(job: str, forwarded: list[str], timeout: float) -> dict | str:
    """One run of a job in a fresh process: its result, or why it has none."""
    try:
        done = subprocess.run([sys.executable, __file__, "--job", job, *forwarded], capture_output=True, text=True,
                              timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return f"{'>' + format(timeout, '.0f'):>8s} {'':>13s} {'':>12s}  (stopped)"
    if done.returncode != 0:
        return f"failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def _value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6f}"
    if isinstance(value, dict):
        pooled = {k: v for k, v in value["pooled"].items()}
        text = ", ".join(f"{k}={v:.6f}" for k, v in pooled.items()) if len(pooled) < 3 else f"{len(pooled)} metrics"
        return f"pooled {text}; max bound {value['max_bound']:.1e}"
    return ""


if __name__ == "__main__":
    main()

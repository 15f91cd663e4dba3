"""A 2-process CPU DDP run (gloo) gives the same metrics as one process, even when a process never
sees a category."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from anomaly.metrics import AnomalyMetrics

CATEGORIES = ["a", "b", "c", "never_seen"]
MODES = ("exact", "binned")
TIMEOUT = 120


def batches() -> list[tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Deterministic batches: several for "a" and "b", two for "c" (all given to rank 0 below)."""
    generator = torch.Generator().manual_seed(0)
    out = []
    for index, category in enumerate(["a", "b", "a", "c", "b", "a", "c", "b"]):
        mask = torch.zeros(3, 1, 16, 16)
        mask[1, :, 2:6, 3:9] = 1
        mask[2, :, 9:11, 9:15] = 1
        mask[2, :, 12:13, index:index + 2] = 1
        anomaly_map = torch.rand(3, 1, 16, 16, generator=generator) + 0.8 * mask
        anomaly_map = torch.round(anomaly_map * 64) / 64  # plenty of ties
        score = anomaly_map.flatten(1).amax(1)
        out.append(([category] * 3, anomaly_map, score, mask, torch.tensor([0, 1, 1])))
    return out


def rank_of(index: int, category: str) -> int:
    """Rank 0 gets every "c" batch, so rank 1 never sees "c"; "a" and "b" alternate."""
    return 0 if category == "c" else index % 2


def run(rank: int | None = None, world: int = 1) -> dict[str, dict]:
    results = {}
    for mode in MODES:
        metrics = AnomalyMetrics(CATEGORIES, mode=mode, bins=512)
        for index, (categories, anomaly_map, score, mask, label) in enumerate(batches()):
            if rank is None or rank_of(index, categories[0]) == rank:
                metrics.update(categories, anomaly_map, score, mask, label)
        results[mode] = metrics.compute()
    return results


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)  # first: a forked child must not enter the parent's OpenMP pool
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = run(rank, world)
        Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_two_process_gloo_equals_one_process(tmp_path: Path) -> None:
    # fork: the workers inherit the imports (spawn would spend most of the test importing torch);
    # each worker first drops to one intra-op thread, as OpenMP is not fork-safe otherwise
    context = mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False,
                                 start_method="fork")
    deadline = time.monotonic() + TIMEOUT
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the DDP workers did not finish within {TIMEOUT} s")
    single = json.loads(json.dumps(run()))  # the same float -> JSON round trip as the workers
    for rank in (0, 1):
        ddp = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert ddp["exact"] == single["exact"]  # bit for bit
        for group, values in single["binned"].items():  # region-weight sums: float64 rounding only
            for name, value in values.items():
                other = ddp["binned"][group][name]
                assert other == value if value is None else other == pytest.approx(value, rel=1e-12, abs=0)
    assert single["exact"]["c"]["pixel_aupro"] is not None
    assert all(v is None for v in single["exact"]["never_seen"].values())
    assert single["exact"]["pooled"]["pixel_aupro"] != single["exact"]["mean"]["pixel_aupro"]

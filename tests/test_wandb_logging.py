"""logger=wandb offline (and logger=tensorboard): what lands in the run folder, read back from the loggers' own files.

The ``.wandb`` file is W&B's record log (LevelDB log framing of ``wandb_internal_pb2.Record``
protobufs; wandb 0.31 ships no Python reader, so the framing is unpacked here and the records are
parsed with W&B's own protobuf classes). Media (tables, images) are the files under ``files/media``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

pytestmark = pytest.mark.one_thread

CATEGORIES = ["capsule", "wood"]


def wandb_records(path: Path) -> Iterator[object]:
    """The protobuf records of a ``.wandb`` file: a 7-byte ``:W&B`` header, then 32 KiB blocks of
    ``crc32(4) length(2, little-endian) type(1) data`` chunks (1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if left < 7 or (length == 0 and kind == 0):  # the block's zero padding
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            yield Record.FromString(pending)
            pending = b""


def run_records(folder: Path, timeout: float = 60.0) -> list[object]:
    """The records of the ``.wandb`` file in ``folder``, once W&B's service has written the run record
    (it writes after ``finish()`` returns on a busy machine)."""
    deadline = time.monotonic() + timeout
    while True:
        found = list(wandb_records(next(folder.glob("*.wandb"))))
        if any(r.WhichOneof("record_type") == "run" for r in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


@pytest.fixture(scope="module")
def wandb_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m anomaly.train logger=wandb`` on two tiny categories (separate: one W&B run each)."""
    from anomaly.train import main

    work = tmp_path_factory.mktemp("wandb")
    GlobalHydra.instance().clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANOMALY_ROOT", str(work))
        patch.setenv("WANDB_SILENT", "true")
        patch.setattr(sys, "argv", ["anomaly.train", "logger=wandb", f"data.root={synthetic_root}",
                                    f"data.category=[{','.join(CATEGORIES)}]", "data.image_size=64",
                                    "data.crop_size=null", "data.num_workers=0", "data.prepare=null",
                                    "callbacks.heatmaps.n_images=2", f"hydra.run.dir={work / 'run'}"])
        main()
    GlobalHydra.instance().clear()
    return work / "run"


def offline_runs(folder: Path) -> dict[str, tuple[Path, list[object]]]:
    """W&B run name -> (its folder, its records)."""
    found = {}
    for run in (folder / "wandb").glob("offline-run-*"):
        records = run_records(run)
        name = next(r.run.display_name for r in records if r.WhichOneof("record_type") == "run")
        found[name] = (run, records)
    return found


def test_each_category_is_a_run_with_config_metrics_table_and_media(wandb_run: Path) -> None:
    metrics = json.loads((wandb_run / "metrics.json").read_text())
    runs = offline_runs(wandb_run)
    assert sorted(runs) == [f"padim_synthetic_{c}" for c in CATEGORIES]
    for category in CATEGORIES:
        folder, records = runs[f"padim_synthetic_{category}"]
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        assert run.run_group == wandb_run.name and run.job_type == "padim"  # group = run folder, job type = method
        config = {item.key: json.loads(item.value_json) for r in records if r.WhichOneof("record_type") == "config"
                  for item in r.config.update}
        assert config["model"]["_target_"] == "anomaly.models.padim.Padim"  # the resolved run config
        history = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for r in records
                   if r.WhichOneof("record_type") == "history" for item in r.history.item}
        assert history[f"test/{category}/image_auroc"] == pytest.approx(metrics["categories"][category]["image_auroc"])
        table = json.loads(next((folder / "files/media/table/test").glob("metrics_*.table.json")).read_text())
        row = dict(zip(table["columns"], table["data"][0], strict=True))
        assert row["category"] == category
        assert row["pixel_aupro"] == pytest.approx(metrics["categories"][category]["pixel_aupro"])
        assert len(list((folder / "files/media/images/heatmaps").glob(f"{category}_*.png"))) == 2
        assert list((folder / "files/media/images/curves").glob(f"{category}_*.png"))  # ROC/PRO figure
    last, _ = runs[f"padim_synthetic_{CATEGORIES[-1]}"]  # the last category's run also holds every category + mean
    table = json.loads(next((last / "files/media/table/test").glob("all_categories_*.table.json")).read_text())
    assert [row[0] for row in table["data"]] == [*CATEGORIES, "mean"]


def test_report_table_joins_the_runs_group(wandb_run: Path) -> None:
    from anomaly.reporting.build import make_report
    from anomaly.reporting.wandb_report import log_report

    report = make_report(wandb_run, plots=True)
    folder = log_report(report, wandb_run)
    records = run_records(folder)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.run_group == wandb_run.name and run.job_type == "report"
    table = json.loads(next((folder / "files/media/table/report").glob("rows_*.table.json")).read_text())
    assert [row[table["columns"].index("category")] for row in table["data"]] == [*CATEGORIES, "mean"]
    assert list((folder / "files/media/images/report/plots").glob("curves_capsule_*.png"))


def test_tensorboard_gets_the_same_scalars_and_images(synthetic_root: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from anomaly.train import main

    GlobalHydra.instance().clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANOMALY_ROOT", str(tmp_path))
        patch.setattr(sys, "argv", ["anomaly.train", "logger=tensorboard", f"data.root={synthetic_root}",
                                    "data.category=capsule", "data.image_size=64", "data.crop_size=null",
                                    "data.num_workers=0", "data.prepare=null", "callbacks.heatmaps.n_images=2",
                                    f"hydra.run.dir={tmp_path / 'run'}"])
        main()
    GlobalHydra.instance().clear()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["categories"]["capsule"]
    assert events.Scalars("test/capsule/pixel_aupro")[-1].value == pytest.approx(metrics["pixel_aupro"], rel=1e-6)
    assert {"heatmaps/capsule", "curves/capsule"} <= set(events.Tags()["images"])

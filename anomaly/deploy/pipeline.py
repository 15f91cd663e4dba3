"""``python -m anomaly.predict``'s work: images in, panels, raw maps and ``scores.csv`` out.

While it runs, ``predict.json`` says ``status: running`` with the images done and in all, and the rows so
far are in ``scores.partial.csv`` (both rewritten atomically after every batch); ``scores.csv`` appears
only when every image is done (``status: finished``). A failure marks ``status: failed`` with the
error; a killed run stays ``running`` with the counts it reached, and leaves no ``scores.csv``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from anomaly.config.check import ConfigError
from anomaly.data.errors import DataError
from anomaly.deploy.detector import Detector, Result, describe
from anomaly.deploy.inputs import image_paths, output_name
from anomaly.deploy.overlay import prediction_panel
from anomaly.utils.atomic import atomic_open, atomic_save, atomic_write_json

COLUMNS = ("path", "category", "score", "normalised_score", "decision", "threshold", "threshold_source")
PARTIAL = "scores.partial.csv"


@dataclass
class Outcome:
    """What a prediction run wrote: rows of ``scores.csv`` and the skipped files with their reason."""

    rows: list[dict[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def predict_images(
    input_spec: str | Path,
    output: str | Path,
    detector_for: Callable[[str | None], Detector],
    categories: Sequence[str] = (),
    category: str | None = None,
    batch_size: int = 8,
    overlays: bool = True,
    maps: bool = True,
    progress: bool = True,
) -> Outcome:
    """Predict every image of ``input_spec`` into ``output``.

    Args:
        detector_for: the detector for a category (``None``: the only model); called once per category.
        categories: the model's categories: an image's category is ``category`` if given, else the
            last folder of its path named after one of them, else ``None``.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be at least 1.")
    paths, root = image_paths(input_spec)
    output = Path(output)
    outcome = Outcome()
    detectors: dict[str | None, Detector] = {}
    used: dict[str, dict] = {}
    (output / "scores.csv").unlink(missing_ok=True)  # an earlier run's into this folder: replaced at the end
    _write_tables(output, outcome, used, len(paths), "running")
    try:
        with _bar(len(paths), progress) as advance:
            for group, batch in _batches(paths, categories, category, batch_size):
                if group not in detectors:
                    detectors[group] = detector_for(group)
                    used[group or "all"] = describe(detectors[group])
                _predict_batch(detectors[group], batch, root, output, outcome, overlays, maps)
                _write_tables(output, outcome, used, len(paths), "running")
                advance(len(batch))
        if not outcome.rows:
            raise DataError(f"input={input_spec}: none of its {len(paths)} files could be read "
                            f"(first: {outcome.skipped[0][1]})")
    except BaseException as error:
        with contextlib.suppress(OSError):  # an unwritable folder: the original error says so
            _write_tables(output, outcome, used, len(paths), "failed", f"{type(error).__name__}: {error}")
        raise
    _write_tables(output, outcome, used, len(paths), "finished")
    return outcome


def _predict_batch(detector: Detector, batch: list[Path], root: Path, output: Path, outcome: Outcome,
                   overlays: bool, maps: bool) -> None:
    """One batch of images of one category: outputs written, rows and skipped files added to ``outcome``."""
    images, kept = [], []
    for path in batch:
        try:
            images.append(detector.preprocess.rgb(path))
            kept.append(path)
        except DataError as error:
            outcome.skipped.append((str(path), str(error)))
            print(f"skipped {path}: {error}", file=sys.stderr)
    if images:
        for path, result in zip(kept, detector.predict(images), strict=True):
            _write_image_outputs(output, output_name(path, root), result, detector, overlays, maps)
            outcome.rows.append(_row(path, detector, result))


def _batches(paths: list[Path], categories: Sequence[str], category: str | None,
             size: int) -> Iterator[tuple[str | None, list[Path]]]:
    """Consecutive batches of images of one category each."""
    groups: dict[str | None, list[Path]] = {}
    for path in paths:
        groups.setdefault(category or category_of(path, categories), []).append(path)
    for group, members in groups.items():
        for start in range(0, len(members), size):
            yield group, members[start:start + size]


def category_of(path: Path, categories: Sequence[str]) -> str | None:
    """The deepest folder of ``path`` named after one of ``categories``."""
    for part in reversed(path.resolve().parent.parts):
        if part in categories:
            return part
    return None


def _row(path: Path, detector: Detector, result: Result) -> dict[str, str]:
    return {"path": str(path), "category": detector.category, "score": f"{result.score:.6g}",
            "normalised_score": f"{result.normalised:.4f}", "decision": result.decision,
            "threshold": f"{detector.thresholds.image:.6g}", "threshold_source": detector.thresholds.source}


def _write_image_outputs(output: Path, name: str, result: Result, detector: Detector, overlays: bool,
                         maps: bool) -> None:
    if maps:
        atomic_save(output / "maps" / f"{name}.npy", lambda handle: np.save(handle, result.anomaly_map))
    if overlays:
        t = detector.thresholds
        panel = prediction_panel(result.image, result.anomaly_map, result.region, t.map_min, t.map_max)
        ok, encoded = cv2.imencode(".png", panel[..., ::-1])
        if ok:
            atomic_save(output / "overlays" / f"{name}.png", lambda handle: handle.write(encoded.tobytes()))


def _write_tables(output: Path, outcome: Outcome, used: dict[str, dict], total: int, status: str,
                  error: str | None = None) -> None:
    """The rows (``scores.partial.csv`` until ``finished``, then ``scores.csv``), ``skipped.csv`` and
    ``predict.json`` with the status and counts, each written atomically."""
    final = status == "finished"
    _write_csv(output / ("scores.csv" if final else PARTIAL), COLUMNS, outcome.rows)
    if final:
        (output / PARTIAL).unlink(missing_ok=True)
    if outcome.skipped:
        _write_csv(output / "skipped.csv", ("path", "reason"),
                   [{"path": p, "reason": r} for p, r in outcome.skipped])
    sources = sorted({model["thresholds"]["source"] for model in used.values()})
    atomic_write_json(output / "predict.json", {
        "status": status, **({"error": error} if error else {}),
        "images_total": total, "images_done": len(outcome.rows) + len(outcome.skipped),
        "images": len(outcome.rows), "skipped": len(outcome.skipped),
        "scores": "scores.csv" if final else PARTIAL, "threshold_sources": sources, "models": used})


def _write_csv(path: Path, columns: Sequence[str], rows: list[dict[str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows(rows)
    with atomic_open(path, "w") as handle:
        handle.write(buffer.getvalue())


class _bar:
    """A rich progress bar on stderr (nothing when ``enabled`` is false)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.progress = Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                 console=Console(stderr=True), disable=not enabled, transient=False)
        self.task = self.progress.add_task("predict", total=total)

    def __enter__(self) -> Callable[[int], None]:
        self.progress.start()
        return lambda n: self.progress.advance(self.task, n)

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

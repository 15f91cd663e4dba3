"""Predict on new images: ``python -m anomaly.predict ckpt_path=<ckpt | run folder | model.onnx> input=<image | folder | glob>``.

Writes, into ``output`` (default ``outputs/predict/<date>/<time>``): ``overlays/<name>.png`` (input |
heatmap | contour at the pixel threshold), ``maps/<name>.npy`` (the raw map at the model's input
size), ``scores.csv`` (path, category, score, normalised score, decision, threshold and its source)
once every image is done (``scores.partial.csv`` until then), ``skipped.csv`` (files that could not be
read, each also printed on one line) and ``predict.json`` (status ``running|finished|failed``, images
done and in all, the model, thresholds and preprocessing used) — all written atomically. Preprocessing
is the checkpoint's own test transform; thresholds are the checkpoint's (``threshold_source``) unless
``threshold=`` / ``pixel_threshold=`` override them; the console line names their source. The work is
done by ``anomaly.deploy``.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from anomaly.config.precheck import launch
from anomaly.deploy import load
from anomaly.deploy.detector import EXPORTED_SUFFIXES
from anomaly.deploy.pipeline import Outcome, predict_images
from anomaly.deploy.sources import SOURCE_NAMES
from anomaly.engine.checkpoints import read_checkpoint
from anomaly.engine.console import quiet_lightning
from anomaly.engine.run import selected_checkpoints
from anomaly.utils.errors import user_errors


def predict(cfg: DictConfig) -> Outcome:
    """Predict every image of ``cfg.input`` with the model of ``cfg.ckpt_path`` (see ``conf/predict.yaml``)."""
    quiet_lightning()
    path = Path(str(cfg.ckpt_path)).expanduser()
    categories: list[str] = []
    if not (path.suffix.lower() in EXPORTED_SUFFIXES and path.is_file()):
        for checkpoint in selected_checkpoints(path):
            categories += [str(c) for c in read_checkpoint(checkpoint).get("anomaly_categories") or []]

    def detector_for(category: str | None):
        return load(path, category=category, threshold=cfg.threshold, pixel_threshold=cfg.pixel_threshold,
                    threshold_source=cfg.threshold_source, runtime=cfg.runtime, threads=cfg.threads)

    outcome = predict_images(cfg.input, cfg.output, detector_for, categories, cfg.category, int(cfg.batch_size),
                             bool(cfg.overlays), bool(cfg.maps), bool(cfg.progress))
    anomalous = sum(row["decision"] == "anomalous" for row in outcome.rows)
    skipped = f", {len(outcome.skipped)} skipped (skipped.csv)" if outcome.skipped else ""
    sources = sorted({row["threshold_source"] for row in outcome.rows})
    print(f"predict: {len(outcome.rows)} images, {anomalous} anomalous{skipped} at the {' / '.join(sources)} "
          f"threshold{'s' if len(sources) > 1 else ''} ({', '.join(SOURCE_NAMES.get(s, s) for s in sources)}) → "
          f"{Path(cfg.output) / 'scores.csv'}")
    return outcome


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def _hydra_main(cfg: DictConfig) -> None:
    with user_errors():
        predict(cfg)


def main() -> None:
    """Entry point: check overrides first, then run Hydra."""
    launch("predict", _hydra_main)


if __name__ == "__main__":
    main()

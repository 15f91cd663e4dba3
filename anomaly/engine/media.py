"""Test results to the loggers that show more than scalars: a metrics table (W&B) and ROC/PRO curve images.

Scalars already reach every logger through ``AnomalyModule.log``; heatmap panels through
``HeatmapWriter``. Here: the per-category and mean metrics as a W&B Table, and the curves the test
computed as images (W&B media, TensorBoard images).
"""

from __future__ import annotations

from typing import Any


def log_results(loggers: list[Any], results: dict[str, dict[str, float | None]], curves: dict[str, Any],
                key: str = "test/metrics") -> None:
    """Log ``results`` (group -> metric -> value) as a table and ``curves`` (group -> kind -> points) as images."""
    tables = [lg for lg in loggers if hasattr(lg, "log_table")]
    images = [lg for lg in loggers if hasattr(lg, "log_image") or hasattr(getattr(lg, "experiment", None), "add_image")]
    if not results or not (tables or images):
        return
    names = sorted({name for values in results.values() for name in values})
    rows = [[group, *[values.get(name) for name in names]] for group, values in results.items()]
    for logger in tables:
        logger.log_table(key=key, columns=["category", *names], data=rows)
    if not curves or not images:
        return
    from anomaly.reporting.plots import curve_figure, to_array

    pictures = {group: to_array(curve_figure(group, {group: kinds})) for group, kinds in curves.items()}
    for logger in images:
        for group, picture in pictures.items():
            if hasattr(logger, "log_image"):  # W&B
                logger.log_image(key=f"curves/{group}", images=[picture], caption=[f"{group}: ROC / PRO"])
            else:  # TensorBoard
                logger.experiment.add_image(f"curves/{group}", picture, dataformats="HWC")

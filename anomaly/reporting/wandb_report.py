"""The report's tables and plots as one offline W&B run, grouped with the sweep's training runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def log_report(report: dict[str, Any], output: Path, project: str = "anomaly") -> Path:
    """Log ``runs``/``summary`` as W&B Tables and the plots as images; returns the run's folder.

    The group is the output folder's name, which is what ``logger=wandb`` uses as the group of a
    sweep's runs when the report is written into the sweep folder.
    """
    import wandb

    output.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=project, dir=str(output), mode="offline", group=output.name, job_type="report",
                     name=f"report_{output.name}", settings=wandb.Settings(silent=True))
    logged: dict[str, Any] = {}
    for key in ("rows", "summary"):
        rows = report[key]
        if rows:
            columns = list(rows[0])
            logged[f"report/{key}"] = wandb.Table(columns=columns, data=[[_plain(r.get(c)) for c in columns] for r in rows])
    for figure in report["figures"]:
        logged[f"report/plots/{figure.stem}"] = wandb.Image(str(figure))
    run.log(logged)
    folder = Path(run.dir).parent
    run.finish()
    # Drop W&B's process-wide settings: Lightning's WandbLogger selects offline mode through the
    # WANDB_MODE environment variable, which a singleton set up here would never read again.
    wandb.teardown()
    return folder


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, int | float | str) else str(value)

"""One table and plots for a sweep or a folder of runs: ``python -m anomaly.report <folder> [output=DIR] [wandb=true]``.

Reads every run below the folder (``metrics.json``, ``manifest.json``, ``curves.json``) and writes
``report.md`` (mean ± std over seeds per group, every run, the runs it skipped and why), ``runs.csv``,
``summary.csv`` and ``plots/*.png`` (ROC/PRO curves per category, metric against each swept parameter,
per-category bars comparing methods) into the folder, or into ``output=``. ``plots=false`` skips the
plots; ``wandb=true`` also logs the tables and plots to an offline W&B run in the output folder
(group = the folder's name, job type ``report``; ``wandb sync <output>/wandb/offline-run-*`` uploads it).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from anomaly.reporting.build import ReportError, make_report
from anomaly.utils.errors import user_errors

OPTIONS = ("output", "plots", "wandb")


def parse(argv: Sequence[str]) -> tuple[Path, dict[str, str]]:
    """The folder and the ``key=value`` options of a command line."""
    positional = [a for a in argv if "=" not in a]
    options = dict(a.split("=", 1) for a in argv if "=" in a)
    unknown = sorted(set(options) - set(OPTIONS))
    if len(positional) != 1 or unknown:
        what = f"unknown option {unknown[0]}=" if unknown else "give exactly one folder"
        raise ReportError(f"{what}; usage: python -m anomaly.report <sweep or runs folder> [output=DIR] "
                          "[plots=false] [wandb=true].")
    return Path(positional[0]), options


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    with user_errors():
        folder, options = parse(sys.argv[1:] if argv is None else argv)
        report = make_report(folder, options.get("output"), plots=_flag(options.get("plots", "true"), "plots"))
        if _flag(options.get("wandb", "false"), "wandb"):
            from anomaly.reporting.wandb_report import log_report

            log_report(report, Path(options.get("output") or folder))
        print(f"{len(report['rows'])} rows from {len(report['runs'])} runs → {report['markdown']}")
        for path, reason in report["skipped"]:
            print(f"skipped {path}: {reason}")


def _flag(value: str, name: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise ReportError(f"{name}={value} is not a boolean; use {name}=true or {name}=false.")


if __name__ == "__main__":
    main()

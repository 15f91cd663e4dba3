"""VisA layout: images under ``<cat>/Data/Images``, the split given by a CSV file (``1cls.csv``)."""

from __future__ import annotations

import csv
from pathlib import Path

from anomaly.data.errors import DataError
from anomaly.data.layouts.common import check_category, check_root, check_split, missing_mask
from anomaly.data.record import Record, Split

HOLDING = "VisA (<category>/Data/Images/{Normal,Anomaly}/*.JPG and split_csv/1cls.csv)"
COLUMNS = ("object", "split", "label", "image", "mask")
LABELS = {"normal": 0, "anomaly": 1}


class VisaLayout:
    """VisA: rows ``object,split,label,image,mask`` of the split CSV, paths relative to the root.

    Args:
        split_csv: the split file, relative to the data root (or absolute).

    Anomalous samples get the defect name ``anomaly`` (VisA's CSV does not name defect types).
    """

    def __init__(self, split_csv: str = "split_csv/1cls.csv") -> None:
        self.split_csv = split_csv

    def categories(self, root: Path) -> list[str]:
        """The ``object`` names of the split CSV, sorted."""
        return sorted({row["object"] for _, row in self._rows(root)})

    def records(self, root: Path, category: str, split: Split) -> list[Record]:
        """Rows of ``category`` and ``split`` in CSV order; anomalous rows must name an existing mask."""
        check_split(split)
        path = Path(root).expanduser()
        rows = self._rows(path)
        check_category(category, sorted({row["object"] for _, row in rows}), path)
        records: list[Record] = []
        for line, row in rows:
            if row["object"] != category or row["split"] != split:
                continue
            where = f"{self._csv_path(path)} line {line}"
            label = LABELS.get(row["label"])
            if label is None:
                raise DataError(f"{where} has label={row['label']!r}; use 'normal' or 'anomaly'.")
            image = path / row["image"]
            if not image.is_file():
                raise DataError(
                    f"{where} names {image}, which does not exist; fix data.root or the split CSV."
                )
            if label == 0:
                records.append(Record(image, None, 0, category, "good"))
                continue
            mask = path / row["mask"] if row["mask"] else None
            if mask is None or not mask.is_file():
                raise missing_mask(
                    image, mask or path / category / "Data" / "Masks" / "Anomaly" / f"{image.stem}.png"
                )
            records.append(Record(image, mask, 1, category, "anomaly"))
        return records

    def _csv_path(self, root: Path) -> Path:
        return (
            Path(self.split_csv).expanduser() if Path(self.split_csv).is_absolute() else root / self.split_csv
        )

    def _rows(self, root: Path) -> list[tuple[int, dict[str, str]]]:
        """(line number, row) pairs of the split CSV, with its columns checked."""
        path = check_root(root, HOLDING)
        csv_path = self._csv_path(path)
        if not csv_path.is_file():
            raise DataError(
                f"VisA split file {csv_path} does not exist; put split_csv/1cls.csv (from amazon-science/spot-diff) "
                "under data.root or set the layout's split_csv option to its path."
            )
        with csv_path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(
                    f"VisA split file {csv_path} lacks the column(s) {', '.join(missing)}; "
                    f"it needs the header {','.join(COLUMNS)}."
                )
            rows = [(i + 2, {k: (row[k] or "").strip() for k in COLUMNS}) for i, row in enumerate(reader)]
        if not rows:
            raise DataError(f"VisA split file {csv_path} has no rows; use VisA's split_csv/1cls.csv.")
        return rows

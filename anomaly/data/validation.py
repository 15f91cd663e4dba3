"""The validation split: which records leave train or test to select models on, chosen by seed."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Literal

import numpy as np

from anomaly.data.errors import DataError
from anomaly.data.record import Record

ValMode = Literal["synthetic", "from_test", "none"]
VAL_MODES = ("synthetic", "from_test", "none")


def check_val(val: str, fraction: float) -> None:
    """One sentence for a validation option that cannot work."""
    if val not in VAL_MODES:
        raise DataError(f"data.val={val} is not valid; use one of {', '.join(VAL_MODES)}.")
    if val != "none" and not 0.0 < float(fraction) < 1.0:
        raise DataError(f"data.val_fraction={fraction} must lie strictly between 0 and 1.")


def held_out(records: Sequence[Record], fraction: float, seed: int, split: str) -> set[Record]:
    """A seeded ``fraction`` of ``records``, per category and label (each keeps both classes), at
    least one of each group and never all of one.

    The draw of a category depends only on (seed, category, label), so the ``separate`` setting's
    per-category data modules hold out exactly what the ``unified`` one does.
    """
    groups: dict[tuple[str, int], list[Record]] = {}
    for record in records:
        groups.setdefault((record.category, record.label), []).append(record)
    chosen: set[Record] = set()
    for (category, label), members in sorted(groups.items()):
        if len(members) < 2:
            raise DataError(
                f"Category {category} has {len(members)} {'normal' if label == 0 else 'anomalous'} {split} "
                f"image(s): too few to hold some out for validation; set data.val=none or add images."
            )
        n = min(len(members) - 1, max(1, round(fraction * len(members))))
        rng = np.random.default_rng([seed, zlib.crc32(category.encode()), label])
        chosen.update(members[i] for i in rng.permutation(len(members))[:n])
    return chosen


def listing(records: Sequence[Record], origin: str) -> list[dict[str, object]]:
    """What the run folder records of the validation images (``val_split.json``)."""
    return [{"category": r.category, "image": str(r.image), "label": r.label, "defect": r.defect, "from": origin}
            for r in records]


def partition(records: Sequence[Record], parts: int, seed: int, fix: str) -> list[set[Record]]:
    """``records`` split into ``parts`` disjoint seeded folds, per category and label (as :func:`held_out`
    draws: a category's folds depend only on (seed, category, label)); every group needs two records."""
    folds: list[set[Record]] = [set() for _ in range(parts)]
    groups: dict[tuple[str, int], list[Record]] = {}
    for record in records:
        groups.setdefault((record.category, record.label), []).append(record)
    for (category, label), members in sorted(groups.items()):
        if len(members) < 2:
            raise DataError(f"Category {category} has {len(members)} training image(s) of label {label}: too few to "
                            f"hold some out; {fix}.")
        rng = np.random.default_rng([seed, zlib.crc32(category.encode()), label])
        for fold, chosen in zip(folds, np.array_split(rng.permutation(len(members)), min(parts, len(members))),
                                strict=False):
            fold.update(members[i] for i in chosen)
    return folds

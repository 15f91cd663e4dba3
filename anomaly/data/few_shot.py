"""A few real anomalous images per category, taken out of the test set for weakly supervised training.

The continuous dense flow's contrastive pre-training (Zhang et al., 2023) adds 1–2 known defect
types' real images per category to its simulated anomalies (310 images over MVTec AD's 15 categories).
``data.few_shot_anomalies: k`` with ``data.few_shot_mode``:

- ``images`` (ours, the default): ``k`` anomalous test images of each category (seeded, spread over the
  defect types round-robin), e.g. 30 images on MVTec AD at k = 2;
- ``defect_types`` (the paper): every image of ``k`` defect types of each category (seeded), at most all
  but one of its types so that its test set keeps anomalies (a category with one defect type gives none).

The chosen images leave evaluation (the test set and a ``from_test`` validation split never contain them)
and join the training split with their label and defect name. ``few_shot.json`` in the run folder lists
them; the contrastive pre-training's checkpoint records them too, and a flow reading that extractor
refuses to hold out other images (``check_same_few_shot``).

Training samples that are real anomalies keep their defect name (``defect != "good"``); methods that
learn from normal images only (the flows) skip them, the contrastive pre-training uses them as negatives.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from anomaly.data.dataset import AnomalyDataset
from anomaly.data.errors import DataError
from anomaly.data.record import Record

MODES = ("images", "defect_types")


class FewShotMismatchError(DataError):
    """A pre-trained extractor saw other real anomalies than this run holds out of its test set."""


def check_few_shot(k: int, mode: str = "images") -> int:
    """``k`` as an int; a negative count or an unknown mode is a ``DataError``."""
    if int(k) < 0:
        raise DataError(f"data.few_shot_anomalies={k} must be 0 (off) or a positive number per category.")
    if mode not in MODES:
        raise DataError(f"data.few_shot_mode={mode} is unknown; choose one of {list(MODES)}.")
    return int(k)


def select_few_shot(test_records: Sequence[Record], k: int, seed: int = 0, mode: str = "images") -> list[Record]:
    """``k`` anomalous test records per category (``mode=images``), drawn by ``(seed, category)``, round-robin
    over the defect types (sorted) so that ``k = 2`` gives two defect types when a category has them; or
    (``mode=defect_types``) every record of ``k`` defect types per category, at most all but one type.

    Raises:
        DataError: ``k`` is negative, or larger than a category's anomalous test images (naming how many exist).
    """
    if check_few_shot(k, mode) == 0:
        return []
    if mode == "defect_types":
        return _whole_defect_types(test_records, k, seed)
    by_category: dict[str, dict[str, list[Record]]] = {}
    for record in test_records:
        by_category.setdefault(record.category, {})
        if record.label == 1:
            by_category[record.category].setdefault(record.defect, []).append(record)
    chosen: list[Record] = []
    for category, defects in sorted(by_category.items()):
        total = sum(len(v) for v in defects.values())
        if int(k) > total:
            raise DataError(
                f"data.few_shot_anomalies={k} is more than category {category}'s {total} anomalous test images; "
                f"set data.few_shot_anomalies to at most {total}."
            )
        rng = np.random.default_rng([int(seed), zlib.crc32(category.encode())])
        names = sorted(defects)
        order = [names[i] for i in rng.permutation(len(names))]
        pools = {name: [defects[name][i] for i in rng.permutation(len(defects[name]))] for name in order}
        picked: list[Record] = []
        while len(picked) < int(k):
            for name in order:
                if pools[name] and len(picked) < int(k):
                    picked.append(pools[name].pop(0))
        chosen.extend(picked)
    return chosen


def _whole_defect_types(test_records: Sequence[Record], k: int, seed: int) -> list[Record]:
    """Every anomalous record of ``k`` defect types per category (drawn by ``(seed, category)``), keeping at
    least one defect type of each category in its test set."""
    by_category: dict[str, dict[str, list[Record]]] = {}
    for record in test_records:
        if record.label == 1:
            by_category.setdefault(record.category, {}).setdefault(record.defect, []).append(record)
    chosen: list[Record] = []
    for category, defects in sorted(by_category.items()):
        rng = np.random.default_rng([int(seed), zlib.crc32(category.encode())])
        names = sorted(defects)
        for i in rng.permutation(len(names))[: min(int(k), len(names) - 1)]:
            chosen.extend(defects[names[i]])
    return chosen


def few_shot_key(entry: dict[str, Any]) -> tuple[str, str, str]:
    """What identifies a few-shot image across runs and machines: category, defect, file name."""
    return str(entry["category"]), str(entry["defect"]), Path(str(entry["image"])).name


def check_same_few_shot(saved: Sequence[dict[str, Any]], current: Sequence[dict[str, Any]],
                        categories: Sequence[str], source: str) -> None:
    """Refuse a run whose held-out real anomalies (``current``, ``few_shot_listing``) of ``categories`` differ
    from those ``source`` (a pre-trained extractor) trained on (``saved``)."""
    wanted = set(categories)
    before = sorted(few_shot_key(e) for e in saved if str(e["category"]) in wanted)
    now = sorted(few_shot_key(e) for e in current if str(e["category"]) in wanted)
    if before != now:
        seen = [f"{c}/{d}/{n}" for c, d, n in before]
        raise FewShotMismatchError(
            f"{source} was pre-trained on {len(before)} real anomalies ({', '.join(seen[:3]) or 'none'}"
            f"{', …' if len(seen) > 3 else ''}) but this run holds out {len(now)} different ones, so images the "
            "extractor trained on could be tested; set data.few_shot_anomalies, data.few_shot_seed and "
            "data.few_shot_mode as in the pre-training run (its few_shot.json lists them)."
        )


def few_shot_listing(records: Sequence[Record]) -> list[dict[str, object]]:
    """What ``few_shot.json`` records of each image."""
    return [{"category": r.category, "image": str(r.image), "mask": None if r.mask is None else str(r.mask),
             "defect": r.defect, "from": "test"} for r in records]


class FewShotDataset(Dataset):
    """The real anomalous images as training samples: the keys of the training split (with ``source``,
    the image itself, when the normal images have one), their real mask and label 1, no synthesis."""

    def __init__(self, records: Sequence[Record], with_source: bool, **options: Any) -> None:
        self.images = AnomalyDataset(records, **options)
        self.records, self.with_source = self.images.records, with_source

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.images[index]
        if self.with_source:
            sample["source"] = sample["image"].clone()
        return sample


def is_real_anomaly(batch: dict[str, Any]) -> torch.Tensor:
    """B booleans: which training samples are real (few-shot) anomalies, not normal images (none when the
    batch names no defects)."""
    defects = batch.get("defect") or ["good"] * batch["image"].shape[0]
    return torch.tensor([d != "good" for d in defects], dtype=torch.bool, device=batch["image"].device)

"""LightningDataModule over any layout, in the `separate` or `unified` setting."""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from anomaly.data.dataset import AnomalyDataset, Synthesis, check_records
from anomaly.data.errors import DataError
from anomaly.data.few_shot import FewShotDataset, check_few_shot, few_shot_listing, select_few_shot
from anomaly.data.record import Layout, Record
from anomaly.data.transforms import IMAGENET_MEAN, IMAGENET_STD, geometry
from anomaly.data.validation import ValMode, check_val, held_out, listing, partition

Setting = Literal["separate", "unified"]


class AnomalyDataModule(L.LightningDataModule):
    """Train (normal images), validation and test loaders for one category, a list of them, or ``all``.

    Args:
        root: data set folder.
        layout: the data set's layout reader (``anomaly.data.layouts``).
        category: a name, a list of names, or ``"all"``.
        setting: ``separate`` (one model per category; the training entry point runs one after
            another) or ``unified`` (one model over all selected categories).
        prepare: optional callable ``(root) -> None`` run once before reading (e.g. generating the
            embedded synthetic data set).
        synthesis: optional anomaly synthesis strategy applied to training images.
        val: the validation split — ``synthetic`` (``val_fraction`` of the normal training images
            held out, plus a copy of each with an anomaly from ``val_synthesis``, the same every
            epoch), ``from_test`` (``val_fraction`` of the test images moved out of the test set,
            per category and label) or ``none``. Which images: ``validation_listing()``.
        val_fraction, val_seed: size of the held-out part and its seed.
        val_synthesis: the strategy making the synthetic validation anomalies.
        few_shot_anomalies, few_shot_seed: ``k`` real anomalous test images per category moved from
            the test set into the training split (``anomaly.data.few_shot``); 0 = off.
        few_shot_mode: ``images`` (``k`` images per category) or ``defect_types`` (every image of ``k``
            defect types per category, the dense flow paper's few-shot setting).
        calibration_fraction: without a validation split, the share of normal training images per fold
            (``round(1 / fraction)`` disjoint folds per category, drawn by ``val_seed``) that
            ``anomaly.engine.calibration`` holds out of a fit to set the default thresholds on
            (``calibration_fold(i)``, ``without_calibration_fold(i)``); 0 = none.

    Example:
        >>> dm = AnomalyDataModule("data/mvtec", MVTecLayout(), category="bottle")  # doctest: +SKIP
        >>> batch = next(iter(dm.test_dataloader()))  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | Path,
        layout: Layout,
        category: str | Sequence[str] = "all",
        setting: Setting = "separate",
        image_size: int | Sequence[int] = 256,
        crop_size: int | Sequence[int] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 0,
        prepare: Callable[[Path], Any] | None = None,
        synthesis: Synthesis | None = None,
        val: ValMode = "none",
        val_fraction: float = 0.2,
        val_seed: int = 0,
        val_synthesis: Synthesis | None = None,
        few_shot_anomalies: int = 0,
        few_shot_seed: int = 0,
        few_shot_mode: str = "images",
        calibration_fraction: float = 0.2,
    ) -> None:
        super().__init__()
        check_val(val, val_fraction)
        if not 0.0 <= float(calibration_fraction) < 1.0:
            raise DataError(f"data.calibration_fraction={calibration_fraction} must be at least 0 (none) and below 1.")
        if val == "synthetic" and val_synthesis is None:
            raise DataError("data.val=synthetic needs data.val_synthesis (e.g. synthesis@data.val_synthesis=perlin).")
        if setting not in ("separate", "unified"):
            raise DataError(f"data.setting={setting} is not valid; use separate or unified.")
        geometry(image_size, crop_size)  # a bad size or a crop larger than the image stops here, before any data
        self.root = Path(root).expanduser()
        self.layout = layout
        self.category = category
        self.setting = setting
        self.image_size, self.crop_size = image_size, crop_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers = num_workers
        self.prepare = prepare
        self.synthesis = synthesis
        self.val, self.val_fraction, self.val_seed, self.val_synthesis = val, val_fraction, val_seed, val_synthesis
        self.few_shot_anomalies, self.few_shot_seed = check_few_shot(few_shot_anomalies), int(few_shot_seed)
        self.few_shot_mode = few_shot_mode
        check_few_shot(0, few_shot_mode)  # an unknown mode stops here
        self.calibration_fraction = float(calibration_fraction)
        self._held_out: set[Record] | None = None
        self._calibration_out: int | None = None  # the fold left out of training (without_calibration_fold)
        self._few_shot: list[Record] | None = None
        self._categories: list[str] | None = None
        self._records: dict[str, list[Record]] = {}

    @property
    def categories(self) -> list[str]:
        """The selected categories, checked against what the data root holds."""
        if self._categories is None:
            self._prepare_root()
            available = self.layout.categories(self.root)
            if not available:
                raise DataError(
                    f"data.root={self.root} holds no category of this layout; point data.root at the "
                    "data set's top folder."
                )
            wanted = available if self.category == "all" else _as_list(self.category)
            for name in wanted:
                if name not in available:
                    close = difflib.get_close_matches(name, available, n=1)
                    hint = f" (did you mean '{close[0]}'?)" if close else ""
                    raise DataError(
                        f"data.category={name} is not in {self.root}{hint}; available: {', '.join(available)}."
                    )
            self._categories = list(wanted)
        return self._categories

    def for_category(self, category: str) -> AnomalyDataModule:
        """A copy restricted to one category (the `separate` setting runs these one by one)."""
        clone = AnomalyDataModule.__new__(AnomalyDataModule)
        clone.__dict__.update(self.__dict__)
        L.LightningDataModule.__init__(clone)
        clone.category, clone._categories, clone._records, clone._held_out = category, None, {}, None
        clone._few_shot = None
        return clone

    def records(self, split: Literal["train", "test"]) -> list[Record]:
        """All records of ``split`` over the selected categories (checked once)."""
        if split not in self._records:
            records: list[Record] = []
            for name in self.categories:
                found = self.layout.records(self.root, name, split)
                if not found:
                    raise DataError(f"Category {name} in {self.root} has no {split} images; check the layout.")
                records.extend(found)
            check_records(records)
            self._records[split] = records
        return self._records[split]

    def held_out(self) -> set[Record]:
        """The records that left train (``synthetic``) or test (``from_test``) for validation."""
        if self._held_out is None:
            if self.val == "synthetic":
                normal = [r for r in self.records("train") if r.label == 0]
                self._held_out = held_out(normal, self.val_fraction, self.val_seed, "training")
            elif self.val == "from_test":
                pool = [r for r in self.records("test") if r not in self.few_shot()]
                self._held_out = held_out(pool, self.val_fraction, self.val_seed, "test")
            else:
                fold = self._calibration_out
                self._held_out = set(self.calibration_fold(fold)) if fold is not None else set()
        return self._held_out

    def calibration_folds(self) -> int:
        """How many calibration folds there are: none with a validation split (its held-out images serve
        that purpose) or ``calibration_fraction=0``, else ``round(1 / calibration_fraction)``, at least 2."""
        return 0 if self.val != "none" or not self.calibration_fraction else max(2, round(1 / self.calibration_fraction))

    def calibration_fold(self, fold: int = 0) -> list[Record]:
        """The normal training images of calibration fold ``fold`` (empty without calibration folds)."""
        parts = self.calibration_folds()
        if not parts:
            return []
        normal = [r for r in self.records("train") if r.label == 0]
        chosen = partition(normal, parts, self.val_seed, "set data.calibration_fraction=0 or add images")[fold]
        return [r for r in normal if r in chosen]

    def without_calibration_fold(self, fold: int = 0) -> AnomalyDataModule:
        """A copy whose training split leaves ``calibration_fold(fold)`` out (fit on it, then score the fold)."""
        clone = self.for_category(self.category)
        clone._calibration_out = fold
        return clone

    def calibration_dataloader(self) -> DataLoader:
        """The fold this copy leaves out of training, without synthesis, in a fixed order."""
        options = {"image_size": self.image_size, "crop_size": self.crop_size, "mean": self.mean, "std": self.std}
        fold = self.calibration_fold(self._calibration_out or 0)
        return self._loader(AnomalyDataset(fold, **options), self.eval_batch_size, shuffle=False)

    def calibration_listing(self, folds: int) -> list[dict[str, object]]:
        """The first ``folds`` calibration folds, each image with its fold (``calibration_split.json``)."""
        return [{**entry, "fold": i} for i in range(folds) for entry in listing(self.calibration_fold(i), "train")]

    def few_shot(self) -> list[Record]:
        """The real anomalous images taken out of the test set for training (``few_shot_anomalies``)."""
        if self._few_shot is None:
            k = self.few_shot_anomalies
            mode = self.few_shot_mode
            self._few_shot = select_few_shot(self.records("test"), k, self.few_shot_seed, mode) if k else []
        return self._few_shot

    def few_shot_listing(self) -> list[dict[str, object]]:
        """The few-shot images (for ``few_shot.json`` in the run folder); empty when off."""
        return few_shot_listing(self.few_shot())

    def validation_listing(self) -> list[dict[str, object]]:
        """The validation images (for ``val_split.json`` in the run folder); empty without validation."""
        if self.val == "none":
            return []
        origin = "train" if self.val == "synthetic" else "test"
        pool = self.records("train" if origin == "train" else "test")
        return listing([r for r in pool if r in self.held_out()], origin)

    def setup(self, stage: str | None = None) -> None:
        """Read the layout for the stage's split (fails early with a clear message)."""
        self.records("train" if stage == "fit" else "test")
        if stage in ("fit", "validate"):
            self.held_out()
        self.few_shot()

    def dataset(self, split: Literal["train", "val", "test"]) -> Dataset:
        """The dataset of one split; the synthesis strategy applies to ``train`` only."""
        options = {"image_size": self.image_size, "crop_size": self.crop_size, "mean": self.mean, "std": self.std}
        held = self.held_out()
        if split == "train":
            records = [r for r in self.records("train") if r.label == 0 and r not in held]
            normal = AnomalyDataset(records, synthesis=self.synthesis, **options)
            if not self.few_shot():
                return normal
            return ConcatDataset([normal, FewShotDataset(self.few_shot(), self.synthesis is not None, **options)])
        if split == "test":
            shots = set(self.few_shot())
            return AnomalyDataset([r for r in self.records("test") if r not in held and r not in shots], **options)
        if self.val == "from_test":
            return AnomalyDataset([r for r in self.records("test") if r in held], **options)
        normal = [r for r in self.records("train") if r in held]
        always = copy.copy(self.val_synthesis)
        always.normal_probability = 0.0  # every copy anomalous; the originals are the normal half
        anomalous = AnomalyDataset(normal, synthesis=always, seed=self.val_seed, with_source=False, **options)
        return ConcatDataset([AnomalyDataset(normal, **options), anomalous])

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("train"), self.batch_size, shuffle=True)

    def normal_train_dataloader(self) -> DataLoader:
        """The training images in a fixed order at the evaluation batch size (statistics of normal maps)."""
        return self._loader(self.dataset("train"), self.eval_batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader | list:
        """The validation loader (an empty list, which Lightning skips, when ``val=none``)."""
        if self.val == "none":
            return []
        return self._loader(self.dataset("val"), self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"), self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def _prepare_root(self) -> None:
        if self.prepare is not None:
            self.prepare(self.root)
        if not self.root.is_dir():
            raise DataError(
                f"data.root={self.root} does not exist; set data.root to the folder holding the data set."
            )
        if not any(self.root.iterdir()):
            raise DataError(f"data.root={self.root} is empty; put the data set there or fix data.root.")


def _as_list(category: str | Sequence[str]) -> list[str]:
    if isinstance(category, str):
        return [part.strip() for part in category.split(",") if part.strip()]
    return [str(c) for c in category]

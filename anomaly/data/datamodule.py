"""LightningDataModule over any layout, in the `separate` or `unified` setting."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
from torch.utils.data import DataLoader

from anomaly.data.dataset import AnomalyDataset, Synthesis, check_records
from anomaly.data.errors import DataError
from anomaly.data.record import Layout, Record
from anomaly.data.transforms import IMAGENET_MEAN, IMAGENET_STD

Setting = Literal["separate", "unified"]


class AnomalyDataModule(L.LightningDataModule):
    """Train (normal images) and test loaders for one category, a list of them, or ``all``.

    Args:
        root: data set folder.
        layout: the data set's layout reader (``anomaly.data.layouts``).
        category: a name, a list of names, or ``"all"``.
        setting: ``separate`` (one model per category; the training entry point runs one after
            another) or ``unified`` (one model over all selected categories).
        prepare: optional callable ``(root) -> None`` run once before reading (e.g. generating the
            embedded synthetic data set).
        synthesis: optional anomaly synthesis strategy applied to training images.

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
    ) -> None:
        super().__init__()
        if setting not in ("separate", "unified"):
            raise DataError(f"data.setting={setting} is not valid; use separate or unified.")
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
        clone.category, clone._categories, clone._records = category, None, {}
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

    def setup(self, stage: str | None = None) -> None:
        """Read the layout for the stage's split (fails early with a clear message)."""
        self.records("train" if stage == "fit" else "test")

    def dataset(self, split: Literal["train", "test"]) -> AnomalyDataset:
        """The dataset of one split; the synthesis strategy applies to ``train`` only."""
        if split == "train":
            records = [r for r in self.records("train") if r.label == 0]
        else:
            records = self.records("test")
        return AnomalyDataset(
            records,
            self.image_size,
            self.crop_size,
            self.mean,
            self.std,
            synthesis=self.synthesis if split == "train" else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("train"), self.batch_size, shuffle=True)

    def normal_train_dataloader(self) -> DataLoader:
        """The training images in a fixed order at the evaluation batch size (statistics of normal maps)."""
        return self._loader(self.dataset("train"), self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"), self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def _loader(self, dataset: AnomalyDataset, batch_size: int, shuffle: bool) -> DataLoader:
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

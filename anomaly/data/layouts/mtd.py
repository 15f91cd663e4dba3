"""Magnetic Tile Defects layout: ``MT_<Type>/Imgs/<name>.jpg`` with the mask ``<name>.png`` beside it."""

from __future__ import annotations

from pathlib import Path

from anomaly.data.errors import DataError
from anomaly.data.layouts.common import (
    check_category,
    check_ratio,
    check_root,
    check_split,
    list_images,
    missing_mask,
    seeded_split,
    subfolders,
)
from anomaly.data.record import Record, Split

CATEGORY = "magnetic_tile"
FREE = "MT_Free"
HOLDING = "the Magnetic Tile Defects folders MT_Blowhole, MT_Break, MT_Crack, MT_Fray, MT_Free, MT_Uneven"
IMAGE_SUFFIXES = (".jpg", ".jpeg")


class MTDLayout:
    """Magnetic Tile Defects: one category; defect-free images split into train/test by a seeded ratio.

    Args:
        train_ratio: fraction of the ``MT_Free`` images used for training (the rest are good test
            images); every defect image is a test image.
        seed: seed of the split; it depends only on the file names, not on listing order.
        train_list: DifferNet's protocol instead of a seeded ratio — a text file of ``MT_Free`` image
            names, one a line (marco-rudolph/differnet's ``mtd_train_filenames.txt``, 761 of the 952):
            those train, the other free images are good test images.
    """

    def __init__(self, train_ratio: float = 0.8, seed: int = 0, train_list: str | Path | None = None) -> None:
        check_ratio("train_ratio", train_ratio)
        self.train_ratio = float(train_ratio)
        self.seed = int(seed)
        self.train_list = None if train_list in (None, "") else Path(train_list).expanduser()

    def categories(self, root: Path) -> list[str]:
        """``["magnetic_tile"]`` once the root holds ``MT_Free/Imgs``."""
        self._free_images(root)
        return [CATEGORY]

    def records(self, root: Path, category: str, split: Split) -> list[Record]:
        """Train: the training share of ``MT_Free``; test: the rest of it, then every defect image."""
        check_split(split)
        path = Path(root).expanduser()
        check_category(category, self.categories(path), path)
        train, test = self._split(path)
        if split == "train":
            return [Record(path / name, None, 0, CATEGORY, "good") for name in train]
        records = [Record(path / name, None, 0, CATEGORY, "good") for name in test]
        for folder in subfolders(path):
            if not folder.name.startswith("MT_") or folder.name == FREE:
                continue
            defect = folder.name[3:].lower()
            for image in list_images(folder / "Imgs", IMAGE_SUFFIXES):
                mask = image.with_suffix(".png")
                if not mask.is_file():
                    raise missing_mask(image, mask)
                records.append(Record(image, mask, 1, CATEGORY, defect))
        return records

    def split_listing(self, root: Path) -> list[tuple[str, str]]:
        """The train/test split of the defect-free images as ``(path relative to root, split)`` pairs.

        Save it in the run folder so a result can be traced to the exact images it used.
        """
        train, test = self._split(Path(root).expanduser())
        return sorted([(name, "train") for name in train] + [(name, "test") for name in test])

    def _split(self, root: Path) -> tuple[list[str], list[str]]:
        names = [image.relative_to(root).as_posix() for image in self._free_images(root)]
        if self.train_list is None:
            return seeded_split(names, self.train_ratio, self.seed)
        listed = self._listed_names()
        free = {Path(name).name: name for name in names}
        unknown = sorted(set(listed) - set(free))
        if unknown:
            raise DataError(
                f"data.layout.train_list={self.train_list} names {len(unknown)} image(s) not in {root / FREE}/Imgs "
                f"(e.g. {unknown[0]}); give the list of this MTD copy's MT_Free images."
            )
        train = sorted(free[name] for name in set(listed))
        return train, sorted(set(names) - set(train))

    def _listed_names(self) -> list[str]:
        assert self.train_list is not None
        if not self.train_list.is_file():
            raise DataError(
                f"data.layout.train_list={self.train_list} is not a file; give DifferNet's mtd_train_filenames.txt "
                "(one MT_Free image name a line) or null for the seeded train_ratio split."
            )
        listed = [line.strip() for line in self.train_list.read_text().splitlines() if line.strip()]
        if not listed:
            raise DataError(f"data.layout.train_list={self.train_list} is empty; list one MT_Free image name a line.")
        return listed

    def _free_images(self, root: Path) -> list[Path]:
        path = check_root(root, HOLDING)
        folder = path / FREE / "Imgs"
        if not folder.is_dir():
            raise DataError(
                f"data.root={path} has no {FREE}/Imgs folder; set data.root to the folder holding {HOLDING}."
            )
        images = list_images(folder, IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"{folder} holds no .jpg images; the layout expects {FREE}/Imgs/<name>.jpg.")
        return images

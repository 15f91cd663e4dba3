"""MVTec AD layout (also MPDD): ``<cat>/train/good``, ``<cat>/test/<defect>``, ``<cat>/ground_truth``."""

from __future__ import annotations

from pathlib import Path

from anomaly.data.errors import DataError
from anomaly.data.layouts.common import (
    check_category,
    check_root,
    check_split,
    find_mask,
    missing_mask,
    require_images,
    subfolders,
)
from anomaly.data.record import Record, Split

HOLDING = "MVTec-AD-style category folders (<category>/train/good/*.png, <category>/test/<defect>/*.png)"


class MVTecLayout:
    """MVTec AD / MPDD: ``test/<defect>/000.png`` has the mask ``ground_truth/<defect>/000_mask.png``.

    Example:
        >>> MVTecLayout().records(Path("data/mvtec"), "bottle", "test")  # doctest: +SKIP
    """

    def categories(self, root: Path) -> list[str]:
        """Sub-folders of ``root`` that hold a ``train`` or ``test`` folder."""
        path = check_root(root, HOLDING)
        found = [p.name for p in subfolders(path) if (p / "train").is_dir() or (p / "test").is_dir()]
        if not found:
            if (path / "train").is_dir() or (path / "test").is_dir():
                raise DataError(
                    f"data.root={path} is a single category folder; set data.root to its parent {path.parent}."
                )
            raise DataError(
                f"data.root={path} holds no category folder with train/ or test/; set data.root to the folder holding {HOLDING}."
            )
        return found

    def records(self, root: Path, category: str, split: Split) -> list[Record]:
        """Records of ``category``: ``train/good`` for train; every ``test/<defect>`` folder for test."""
        check_split(split)
        path = Path(root).expanduser()
        check_category(category, self.categories(path), path)
        folder = path / category
        if split == "train":
            images = require_images(folder / "train" / "good", "<category>/train/good/*.png")
            return [Record(image, None, 0, category, "good") for image in images]
        test = folder / "test"
        defects = subfolders(test) if test.is_dir() else []
        if not defects:
            raise DataError(
                f"{test} holds no defect folders; the layout expects <category>/test/<defect>/*.png."
            )
        records: list[Record] = []
        for defect_dir in sorted(defects, key=lambda p: (p.name != "good", p.name)):
            defect = defect_dir.name
            for image in require_images(defect_dir, "<category>/test/<defect>/*.png"):
                if defect == "good":
                    records.append(Record(image, None, 0, category, "good"))
                    continue
                mask_dir = folder / "ground_truth" / defect
                mask = find_mask(mask_dir, image.stem, ("_mask",))
                if mask is None:
                    raise missing_mask(image, mask_dir / f"{image.stem}_mask.png")
                records.append(Record(image, mask, 1, category, defect))
        return records

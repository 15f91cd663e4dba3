"""BTAD layout: ``<cat>/train/ok``, ``<cat>/test/{ok,ko}``, masks ``<cat>/ground_truth/ko/<stem>.*``."""

from __future__ import annotations

from pathlib import Path

from anomaly.data.errors import DataError
from anomaly.data.layouts.common import (
    check_category,
    check_root,
    check_split,
    find_mask,
    list_images,
    missing_mask,
    require_images,
    subfolders,
)
from anomaly.data.record import Record, Split

HOLDING = "the BTAD product folders 01, 02, 03 (each with train/ok/ and test/{ok,ko}/)"


class BTADLayout:
    """BTAD (beanTech): masks share the image's stem, extensions vary per product (.bmp/.png).

    Anomalous samples get the defect name ``ko`` (BTAD does not name defect types).
    """

    def categories(self, root: Path) -> list[str]:
        """Sub-folders of ``root`` that hold a ``train`` or ``test`` folder."""
        path = check_root(root, HOLDING)
        found = [p.name for p in subfolders(path) if (p / "train").is_dir() or (p / "test").is_dir()]
        if not found:
            raise DataError(
                f"data.root={path} holds no product folder with train/ or test/; set data.root to the folder holding {HOLDING}."
            )
        return found

    def records(self, root: Path, category: str, split: Split) -> list[Record]:
        """Records of one product: ``train/ok`` for train; ``test/ok`` then ``test/ko`` for test."""
        check_split(split)
        path = Path(root).expanduser()
        check_category(category, self.categories(path), path)
        folder = path / category
        if split == "train":
            images = require_images(folder / "train" / "ok", "<product>/train/ok/*")
            return [Record(image, None, 0, category, "good") for image in images]
        good = list_images(folder / "test" / "ok")
        bad = list_images(folder / "test" / "ko")
        if not good and not bad:
            raise DataError(
                f"{folder / 'test'} holds no images in ok/ or ko/; the layout expects <product>/test/{{ok,ko}}/*."
            )
        records = [Record(image, None, 0, category, "good") for image in good]
        mask_dir = folder / "ground_truth" / "ko"
        for image in bad:
            mask = find_mask(mask_dir, image.stem)
            if mask is None:
                raise missing_mask(image, mask_dir / f"{image.stem}.png")
            records.append(Record(image, mask, 1, category, "ko"))
        return records

"""A user's own folders: normal images, abnormal images (optionally per defect), optional masks."""

from __future__ import annotations

from pathlib import Path

from anomaly.data.errors import DataError
from anomaly.data.layouts.common import (
    check_category,
    check_ratio,
    check_root,
    check_split,
    find_mask,
    list_images,
    missing_mask,
    seeded_split,
    subfolders,
)
from anomaly.data.record import Record, Split

HOLDING = "your normal_dir (and abnormal_dir, mask_dir) folders"


class FolderLayout:
    """Generic folders below the data root (absolute paths work too).

    Args:
        normal_dir: normal (defect-free) images.
        abnormal_dir: anomalous test images; images directly in it get the defect ``abnormal``,
            images in its sub-folders get the sub-folder's name as defect. ``None``: no anomalous images.
        mask_dir: masks of the anomalous images, matched by stem with an optional ``_mask`` suffix
            (in the same sub-folder, or directly in ``mask_dir``). ``None``: image labels only.
        normal_test_dir: normal test images; when ``None``, a seeded ``test_ratio`` share of
            ``normal_dir`` becomes the normal test set.
        test_ratio: share of ``normal_dir`` held out for testing when ``normal_test_dir`` is ``None``.
        seed: seed of that hold-out split (it depends only on the file names).
        category: the single category name this layout reports.
    """

    def __init__(
        self,
        normal_dir: str,
        abnormal_dir: str | None,
        mask_dir: str | None,
        normal_test_dir: str | None = None,
        test_ratio: float = 0.2,
        seed: int = 0,
        category: str = "folder",
    ) -> None:
        if normal_test_dir is None:
            check_ratio("test_ratio", test_ratio)
        self.normal_dir = normal_dir
        self.abnormal_dir = abnormal_dir
        self.mask_dir = mask_dir
        self.normal_test_dir = normal_test_dir
        self.test_ratio = float(test_ratio)
        self.seed = int(seed)
        self.category = category

    def categories(self, root: Path) -> list[str]:
        """``[category]`` once the normal folder holds images."""
        self._normal(check_root(root, HOLDING), "normal_dir", self.normal_dir)
        return [self.category]

    def records(self, root: Path, category: str, split: Split) -> list[Record]:
        """Train: normal images (minus the hold-out); test: held-out or ``normal_test_dir`` images, then abnormal."""
        check_split(split)
        path = Path(root).expanduser()
        check_category(category, self.categories(path), path)
        normal = self._normal(path, "normal_dir", self.normal_dir)
        if self.normal_test_dir is None:
            names = [p.name for p in normal]
            test_names, train_names = seeded_split(names, self.test_ratio, self.seed)
            by_name = {p.name: p for p in normal}
            train, good_test = [by_name[n] for n in train_names], [by_name[n] for n in test_names]
        else:
            train, good_test = normal, self._normal(path, "normal_test_dir", self.normal_test_dir)
        if split == "train":
            return [Record(image, None, 0, category, "good") for image in train]
        records = [Record(image, None, 0, category, "good") for image in good_test]
        return records + self._abnormal(path, category)

    def _normal(self, root: Path, option: str, folder: str) -> list[Path]:
        path = _resolve(root, folder)
        if not path.is_dir():
            raise DataError(
                f"{option}={folder} resolves to {path}, which does not exist; set {option} to a folder of images."
            )
        images = list_images(path)
        if not images:
            raise DataError(
                f"{option}={folder} ({path}) holds no images (.png/.jpg/.bmp/.tif); set {option} to a folder of images."
            )
        return images

    def _abnormal(self, root: Path, category: str) -> list[Record]:
        if self.abnormal_dir is None:
            return []
        folder = _resolve(root, self.abnormal_dir)
        if not folder.is_dir():
            raise DataError(
                f"abnormal_dir={self.abnormal_dir} resolves to {folder}, which does not exist; set abnormal_dir to a folder of images or null."
            )
        groups = [(folder, "abnormal", "")] + [(sub, sub.name, sub.name) for sub in subfolders(folder)]
        masks = _resolve(root, self.mask_dir) if self.mask_dir is not None else None
        if masks is not None and not masks.is_dir():
            raise DataError(
                f"mask_dir={self.mask_dir} resolves to {masks}, which does not exist; set mask_dir to the masks folder or null."
            )
        records: list[Record] = []
        for group, defect, relative in groups:
            for image in list_images(group):
                mask = None
                if masks is not None:
                    mask = find_mask(masks / relative, image.stem, ("", "_mask")) or find_mask(
                        masks, image.stem, ("", "_mask")
                    )
                    if mask is None:
                        raise missing_mask(image, masks / relative / f"{image.stem}.png")
                records.append(Record(image, mask, 1, category, defect))
        if not records:
            raise DataError(
                f"abnormal_dir={self.abnormal_dir} ({folder}) holds no images; add images or set abnormal_dir to null."
            )
        return records


def _resolve(root: Path, folder: str) -> Path:
    path = Path(folder).expanduser()
    return path if path.is_absolute() else root / path

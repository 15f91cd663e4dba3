"""What ``input=`` names: one image, a folder of images (recursively), or a glob pattern."""

from __future__ import annotations

import glob
from pathlib import Path

from anomaly.data.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm")


def image_paths(spec: str | Path) -> tuple[list[Path], Path]:
    """The images ``spec`` names, sorted, and the folder their output names are relative to."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_file():
        return [path], path.parent
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DataError(f"input={text} is a folder without images ({', '.join(IMAGE_SUFFIXES)}); "
                            "point input= at a folder of images, one image or a glob such as 'dir/*.png'.")
        return found, path
    if glob.has_magic(text):
        found = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not found:
            raise DataError(f"input={text} matches no file; check the pattern (quote it so the shell does not expand it).")
        return found, _common_parent(found)
    raise DataError(f"input={text} does not exist; give an image, a folder of images or a glob pattern.")


def _common_parent(paths: list[Path]) -> Path:
    parts = [p.resolve().parent.parts for p in paths]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return Path(*common) if common else Path("/")


def output_name(path: Path, root: Path) -> str:
    """``a/b/c.png`` under ``root`` → ``a_b_c`` (unique per input, flat in the output folder)."""
    try:
        relative = path.resolve().relative_to(root.resolve())
    except ValueError:
        relative = Path(path.name)
    return "_".join(relative.with_suffix("").parts)

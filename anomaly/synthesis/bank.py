"""On-disk bank of synthetic anomaly sources (SDAS samples): images + a JSON-lines manifest.

Layout::

    <root>/bank.json          categories, image size, how the bank was made (written once, atomically)
    <root>/manifest.jsonl     one line per finished image: {"category", "index", "file", "s", "seed"}
    <root>/<category>/<index:06d>.png

Writing is kill-safe: an image is written to a temporary file and renamed into place, and only then
is its manifest line appended (one ``write`` + fsync). A killed writer therefore leaves at worst a
temporary file, an image without a manifest line, or a torn last manifest line; :meth:`Bank.create`
removes all three on resume, and readers ignore them, so the bank never shows a partial or duplicate
entry. Each entry is reproducible from its ``seed`` and its batch (``fill.py`` draws fixed blocks of
indices), so a bank resumed at the same ``batch_size`` equals an uninterrupted one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

META, MANIFEST = "bank.json", "manifest.jsonl"
TMP_SUFFIX = ".tmp"


class BankError(ValueError):
    """A bank folder is missing, or was built for other categories or another image size."""


@dataclass(frozen=True)
class BankEntry:
    """One finished bank image."""

    category: str
    index: int
    file: str
    s: float
    seed: int


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Bank:
    """A bank folder. Use :meth:`create` to write (creates or resumes) and :meth:`open` to read."""

    def __init__(self, root: str | Path, meta: dict[str, Any]) -> None:
        self.root = Path(root)
        self.meta = meta
        self.categories: list[str] = list(meta["categories"])
        self.image_size: tuple[int, int] = tuple(int(v) for v in meta["image_size"])  # type: ignore[assignment]

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, root: str | Path, option: str = "synthesis.bank") -> Bank:
        """Open an existing bank for reading; ``option`` names the setting in error messages."""
        root = Path(root).expanduser()
        try:
            meta = json.loads((root / META).read_text())
        except FileNotFoundError:
            raise BankError(f"{option}={root} is not a bank (no {META}); build one with "
                            "`python -m anomaly.synthesize ckpt_path=... bank_dir=...`.") from None
        except json.JSONDecodeError:
            raise BankError(f"{option}={root}: {META} is corrupt; delete the folder and rebuild the bank.") from None
        return cls(root, meta)

    @classmethod
    def create(cls, root: str | Path, categories: Sequence[str], image_size: Sequence[int],
               option: str = "bank_dir", **info: Any) -> Bank:
        """Create a bank, or resume one made for the same categories and image size.

        On resume, leftovers of a killed writer (temporary files, images without a manifest line, torn
        or duplicate manifest lines) are removed so that sampling continues from a clean state.
        """
        root = Path(root).expanduser()
        meta = {"version": 1, "categories": list(categories), "image_size": [int(v) for v in image_size], **info}
        if (root / META).exists():
            bank = cls.open(root, option)
            bank.validate(categories, image_size, option)
            bank._repair()
            return bank
        root.mkdir(parents=True, exist_ok=True)
        _atomic_write(root / META, json.dumps(meta, indent=2).encode())
        return cls(root, meta)

    def validate(self, categories: Sequence[str] | None = None, image_size: Sequence[int] | None = None,
                 option: str = "synthesis.bank") -> None:
        """Raise :class:`BankError` unless the bank covers ``categories`` at ``image_size`` (H, W)."""
        if categories is not None:
            missing = [c for c in categories if c not in self.categories]
            if missing:
                raise BankError(f"{option}={self.root} was built for categories {self.categories}, not {missing}; "
                                "build a bank for these categories (python -m anomaly.synthesize) or point "
                                f"{option} at one.")
        if image_size is not None and tuple(int(v) for v in image_size) != self.image_size:
            raise BankError(f"{option}={self.root} holds {self.image_size[0]}x{self.image_size[1]} images but "
                            f"{int(image_size[0])}x{int(image_size[1])} are needed; build a bank at that size "
                            f"or point {option} at one.")

    # ------------------------------------------------------------------ reading
    def entries(self) -> list[BankEntry]:
        """Finished entries: valid manifest lines whose file exists, first occurrence of each (category, index)."""
        path = self.root / MANIFEST
        if not path.exists():
            return []
        seen: dict[tuple[str, int], BankEntry] = {}
        text = path.read_text()
        lines = text.split("\n")
        if not text.endswith("\n"):
            lines = lines[:-1]  # torn last line of a killed writer
        for line in lines:
            try:
                entry = BankEntry(**json.loads(line))
            except (json.JSONDecodeError, TypeError):
                continue
            key = (entry.category, entry.index)
            if key not in seen and (self.root / entry.file).is_file():
                seen[key] = entry
        return list(seen.values())

    def done(self, category: str) -> set[int]:
        """Indices of the finished images of ``category``."""
        return {e.index for e in self.entries() if e.category == category}

    def files(self, category: str) -> list[Path]:
        """Paths of the finished images of ``category``, sorted by index."""
        entries = sorted((e for e in self.entries() if e.category == category), key=lambda e: e.index)
        return [self.root / e.file for e in entries]

    # ------------------------------------------------------------------ writing
    def write(self, category: str, index: int, image: np.ndarray, s: float, seed: int) -> BankEntry:
        """Write one uint8 H×W×3 RGB image atomically, then append its manifest line."""
        if category not in self.categories:
            raise BankError(f"Category {category!r} is not one of the bank's categories {self.categories}.")
        if image.shape[:2] != self.image_size:
            raise BankError(f"Image of size {image.shape[:2]} does not match the bank's size {self.image_size}.")
        rel = f"{category}/{index:06d}.png"
        (self.root / category).mkdir(exist_ok=True)
        ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise OSError(f"Could not encode bank image {rel}.")
        _atomic_write(self.root / rel, buf.tobytes())
        entry = BankEntry(category, int(index), rel, float(s), int(seed))
        line = (json.dumps(asdict(entry)) + "\n").encode()
        fd = os.open(self.root / MANIFEST, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        return entry

    def _repair(self) -> None:
        """Drop leftovers of a killed writer and rewrite the manifest (temp + rename) if it was not clean."""
        for tmp in self.root.rglob(f"*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
        entries = self.entries()
        listed = {e.file for e in entries}
        for cat in self.categories:
            for img in (self.root / cat).glob("*.png") if (self.root / cat).is_dir() else []:
                if f"{cat}/{img.name}" not in listed:
                    img.unlink()
        path = self.root / MANIFEST
        clean = "".join(json.dumps(asdict(e)) + "\n" for e in entries)
        if path.exists() and path.read_text() != clean:
            _atomic_write(path, clean.encode())

    def __len__(self) -> int:
        return len(self.entries())

    def __repr__(self) -> str:
        return f"Bank(root={str(self.root)!r}, categories={self.categories}, image_size={self.image_size})"

"""One test or training sample on disk, as every layout reader returns it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

Split = Literal["train", "test"]


@dataclass(frozen=True)
class Record:
    """Where one sample lives and what it is.

    Attributes:
        image: path of the image file.
        mask: path of the ground-truth mask, or ``None`` for normal images (and for anomalous
            images of data sets without masks, where ``label`` alone defines the truth).
        label: 0 for normal, 1 for anomalous.
        category: the category (class) name, e.g. ``"bottle"``.
        defect: the defect type; ``"good"`` for normal samples.
    """

    image: Path
    mask: Path | None
    label: int
    category: str
    defect: str


class Layout(Protocol):
    """How a data set is laid out on disk: which categories exist and which samples they hold."""

    def categories(self, root: Path) -> list[str]:
        """Names of the categories found under ``root`` (sorted)."""

    def records(self, root: Path, category: str, split: Split) -> list[Record]:
        """Samples of one category and split, in a deterministic order."""

"""Anomaly synthesis strategies: ``strategy(image, rng, category) -> (image, mask)``.

Chosen with the Hydra group ``synthesis=none|cutpaste|perlin|sdas``; see :mod:`anomaly.synthesis.base`.
"""

from anomaly.synthesis.bank import Bank, BankError
from anomaly.synthesis.base import SynthesisConfigError, SynthesisStrategy
from anomaly.synthesis.cutpaste import CutPaste
from anomaly.synthesis.foreground import Foreground
from anomaly.synthesis.perlin import PerlinSynthesis
from anomaly.synthesis.sdas import SDASSynthesis
from anomaly.synthesis.textures import FolderTextures, OtherCategoryTextures, ProceduralTextures

__all__ = [
    "Bank",
    "BankError",
    "CutPaste",
    "FolderTextures",
    "Foreground",
    "OtherCategoryTextures",
    "PerlinSynthesis",
    "ProceduralTextures",
    "SDASSynthesis",
    "SynthesisConfigError",
    "SynthesisStrategy",
]

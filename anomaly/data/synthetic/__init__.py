"""The embedded synthetic data set: procedural textures and objects with exact defect masks.

Example:
    >>> from anomaly.data.synthetic import ensure_synthetic
    >>> root = ensure_synthetic("data/synthetic", seed=0)  # doctest: +SKIP
"""

from anomaly.data.synthetic.cache import STAMP, ensure_synthetic
from anomaly.data.synthetic.generate import (
    GENERATOR_VERSION,
    Sample,
    categories,
    defect_types,
    generate,
    render_sample,
)

__all__ = [
    "GENERATOR_VERSION",
    "STAMP",
    "Sample",
    "categories",
    "defect_types",
    "ensure_synthetic",
    "generate",
    "render_sample",
]

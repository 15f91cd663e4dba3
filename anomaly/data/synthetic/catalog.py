"""The categories of the synthetic data set: how to render a normal sample and which defects exist."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from anomaly.data.synthetic import defects
from anomaly.data.synthetic.fields import Scene
from anomaly.data.synthetic.objects import capsule, washer
from anomaly.data.synthetic.textures import fabric, wood


@dataclass(frozen=True)
class Category:
    """A normal-sample renderer and its defect kinds (folder name → defect function)."""

    render: Callable[[np.random.Generator, int], Scene]
    defects: dict[str, defects.Defect]


RUST = ((0.97, 0.82, 0.66), (0.86, 0.8, 0.74))
DIRT = ((0.78, 0.72, 0.62), (0.9, 0.84, 0.7), (0.84, 0.86, 0.95))
DENIM_SPOTS = ((0.62, 0.55, 0.42), (1.4, 1.32, 1.18), (0.7, 0.78, 0.62))
SPOTS = ((0.72, 0.64, 0.52), (0.95, 0.86, 0.58), (0.74, 0.74, 0.8))

CATALOG: dict[str, Category] = {
    "fabric": Category(
        fabric,
        {
            "hole": partial(defects.hole, radius=(4.5, 7.5)),
            "stain": partial(defects.stain, tints=DENIM_SPOTS, radius=(10.0, 20.0)),
            "contamination": partial(defects.contamination, scale=1.2, dark_share=0.15, speck=(4.0, 6.5)),
        },
    ),
    "wood": Category(
        wood,
        {
            "scratch": defects.scratch,
            "crack": partial(defects.crack, along=np.pi / 2),
            "hole": defects.hole,
            "stain": partial(defects.stain, tints=DIRT[:2]),
        },
    ),
    "washer": Category(
        washer,
        {
            "scratch": partial(defects.scratch, width=(0.8, 1.4), contrast=(0.15, 0.3)),
            "hole": partial(defects.missing, radius=(3.5, 6.5)),
            "deformation": partial(defects.deformation, amount=(2.0, 4.0)),
            "contamination": partial(defects.contamination, scale=0.7),
            "stain": partial(defects.stain, tints=RUST, strength=(0.5, 0.8)),
        },
    ),
    "capsule": Category(
        capsule,
        {
            "crack": defects.crack,
            "scratch": partial(defects.scratch, contrast=(0.4, 0.55)),
            "hole": defects.hole,
            "deformation": partial(defects.deformation, amount=(3.5, 6.0)),
            "stain": partial(defects.stain, tints=SPOTS),
        },
    ),
}

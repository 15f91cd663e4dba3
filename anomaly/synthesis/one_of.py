"""Several synthesis strategies as one: each anomalous image from one of them, drawn at random."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from anomaly.synthesis.base import SynthesisConfigError, SynthesisStrategy, check_probability


class OneOf(SynthesisStrategy):
    """Draws one of ``strategies`` per anomalous image (uniformly, or by ``weights``), e.g. CutPaste and
    Perlin together as the dense flow's contrastive pre-training uses them (``synthesis=cutpaste_perlin``).

    Args:
        strategies: name → strategy (each keeps its own options; its ``normal_probability`` is not used).
        weights: optional name → relative weight.
        skip_categories: categories that get no simulated anomaly (the image stays normal): the paper
            skips carpet and tile, whose simulated anomalies look normal.
        normal_probability: chance an image stays normal.

    Example:
        >>> from anomaly.synthesis.cutpaste import CutPaste
        >>> strategy = OneOf({"cutpaste": CutPaste()}, normal_probability=0.0)
        >>> image, mask = strategy(np.zeros((64, 64, 3), np.uint8) + 128, np.random.default_rng(0), "bottle")
    """

    def __init__(
        self,
        strategies: Mapping[str, SynthesisStrategy],
        weights: Mapping[str, float] | None = None,
        skip_categories: Sequence[str] = (),
        normal_probability: float = 0.5,
        max_attempts: int = 8,
    ) -> None:
        super().__init__(normal_probability, max_attempts)
        if not strategies:
            raise SynthesisConfigError("synthesis.strategies is empty; give at least one strategy.")
        self.names = sorted(strategies)
        self.strategies = dict(strategies)
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(self.names))
        if unknown:
            raise SynthesisConfigError(f"synthesis.weights names {unknown}, which are not in synthesis.strategies {self.names}.")
        w = np.array([check_probability(f"synthesis.weights.{n}", weights.get(n, 1.0)) for n in self.names])
        if w.sum() <= 0:
            raise SynthesisConfigError("synthesis.weights are all 0; give at least one strategy a positive weight.")
        self.weights = w / w.sum()
        self.skip_categories = set(skip_categories)

    def synthesize(self, image: np.ndarray, rng: np.random.Generator,
                   category: str | None) -> tuple[np.ndarray, np.ndarray]:
        if category in self.skip_categories:
            return image, np.zeros(image.shape[:2], bool)
        strategy = self.strategies[self.names[int(rng.choice(len(self.names), p=self.weights))]]
        for _ in range(strategy.max_attempts):
            out, region = strategy.synthesize(image, rng, category)
            if np.asarray(region, bool).any():
                return out, region
        return image, np.zeros(image.shape[:2], bool)

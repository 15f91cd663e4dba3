"""Metrics equal their references (sklearn; a slow AUPRO written from the definition), binned stays
within its certified bound of exact, batch splits do not matter, degenerate inputs get clear answers."""

from __future__ import annotations

import bisect
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

import anomaly.metrics.store as store
from anomaly.metrics import (
    METRIC_NAMES,
    AnomalyMetrics,
    ImageAUROC,
    ImageMetrics,
    MetricInputError,
    PixelAUPRO,
    PixelMetrics,
)
from anomaly.metrics.binned import (
    BIN_MAX,
    BIN_MIN,
    HEADER,
    NEG,
    POS,
    PRO,
    _field,
    add_to_histogram,
    empty_histogram,
    merge_histograms,
)
from anomaly.metrics.curves import CurveAccumulator
from anomaly.metrics.exact import Tie, array_parts, merged_parts, sort_keys, stream
from anomaly.metrics.keys import pack_into, pack_torch

torch.set_num_threads(1)
TOL = 1e-6


# -- references ------------------------------------------------------------------------------------
def ref_f1max(y: np.ndarray, s: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return float(np.nanmax(f1))


def ref_binary(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
    return {"auroc": roc_auc_score(y, s), "ap": average_precision_score(y, s), "f1max": ref_f1max(y, s)}


def ref_aupro(maps: np.ndarray, masks: np.ndarray, connectivity: int = 8, limit: float = 0.3) -> float:
    """Slow AUPRO from the definition: a threshold at every distinct score, PRO averaged over regions."""
    structure = np.ones((3, 3)) if connectivity == 8 else None
    regions = []
    for image, mask in zip(maps, masks, strict=True):
        labels, count = ndimage.label(mask, structure=structure)
        regions += [image[labels == k] for k in range(1, count + 1)]
    normal = maps[~masks]
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        fprs.append(float(np.sum(normal >= t)) / normal.size)
        pros.append(float(np.mean([np.mean(r >= t) for r in regions])))
    x, y = np.array(fprs), np.array(pros)
    correction = 0.0
    if limit not in x:
        i = bisect.bisect(list(x), limit)
        y_limit = y[i - 1] + (y[i] - y[i - 1]) * (limit - x[i - 1]) / (x[i] - x[i - 1])
        correction = 0.5 * (y_limit + y[i - 1]) * (limit - x[i - 1])
    keep = x <= limit
    x, y = x[keep], y[keep]
    return (float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x))) + correction) / limit


def ref_all(maps: np.ndarray, masks: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    image = ref_binary(labels, scores)
    pixel = ref_binary(masks.ravel().astype(int), maps.ravel())
    out = {f"image_{k}": v for k, v in image.items()} | {f"pixel_{k}": v for k, v in pixel.items()}
    out["pixel_aupro"] = ref_aupro(maps, masks)
    return out


# -- data ------------------------------------------------------------------------------------------
def blobs(rng: np.random.Generator, n: int, size: int, anomalous: float = 0.6) -> np.ndarray:
    masks = np.zeros((n, size, size), dtype=bool)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        if rng.random() < anomalous:
            for _ in range(rng.integers(1, 4)):
                cy, cx = rng.integers(0, size, 2)
                ry, rx = rng.uniform(1, size / 4, 2)
                masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return masks


def smooth_maps(rng: np.random.Generator, masks: np.ndarray) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.standard_normal(masks.shape), sigma=(0, 2, 2))
    return (noise + 1.5 * ndimage.gaussian_filter(masks.astype(float), sigma=(0, 1.5, 1.5))).astype(np.float32)


def case(name: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(maps float32 N×H×W, masks bool N×H×W) of one adversarial kind."""
    rng = np.random.default_rng(seed)
    n, size = 6, 20
    if name == "random":
        masks = blobs(rng, n, size)
        maps = rng.random(masks.shape, dtype=np.float32) + 0.4 * masks
    elif name == "smooth":
        masks = blobs(rng, n, size)
        maps = smooth_maps(rng, masks)
    elif name == "ties":
        masks = blobs(rng, n, size)
        maps = np.round(rng.random(masks.shape) * 4 + masks).astype(np.float32)
    elif name == "constant":
        masks = blobs(rng, n, size)
        maps = np.full(masks.shape, 0.7, dtype=np.float32)
    elif name == "tiny_regions":  # isolated single pixels (no two touch, not even at a corner)
        masks = np.zeros((n, size, size), dtype=bool)
        masks[:, ::3, ::3] = rng.random((n, (size + 2) // 3, (size + 2) // 3)) < 0.3
        maps = rng.random(masks.shape, dtype=np.float32) + 0.3 * masks
    elif name == "one_region_per_image":
        masks = np.zeros((n, size, size), dtype=bool)
        for i in range(n):
            y, x = rng.integers(0, size - 6, 2)
            masks[i, y:y + rng.integers(1, 7), x:x + rng.integers(1, 7)] = True
        maps = rng.random(masks.shape, dtype=np.float32) + 0.5 * masks
    elif name == "many_regions":  # speckle: many small 8-connected regions of very different sizes
        masks = rng.random((n, size, size)) < 0.12
        maps = np.round(rng.random(masks.shape) * 50 + 10 * masks).astype(np.float32)
    elif name == "diagonal":  # regions that touch only at corners: one region under 8-connectivity
        masks = np.zeros((n, size, size), dtype=bool)
        for i in range(n):
            k = rng.integers(3, size - 3)
            masks[i, np.arange(k), np.arange(k)] = True
            masks[i, size - 3:, :2] = True
        maps = rng.random(masks.shape, dtype=np.float32) + 0.6 * masks
    elif name == "offset_signed":  # negative scores, -0.0 and +0.0, large offset
        masks = blobs(rng, n, size)
        maps = (rng.standard_normal(masks.shape) + masks).astype(np.float32)
        maps[0, :3] = 0.0
        maps[1, :3] = -0.0
        maps[2:] += np.float32(1e4)
    else:
        raise ValueError(name)
    return maps.astype(np.float32), masks


def image_scores(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = masks.reshape(len(masks), -1).any(1).astype(int)
    return maps.reshape(len(maps), -1).max(1), labels


def torchify(maps: np.ndarray, masks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(maps)[:, None], torch.from_numpy(masks.astype(np.float32))[:, None]


def run_collection(maps, masks, scores, labels, splits=None, categories=None, **kwargs) -> dict:
    n = len(maps)
    categories = categories or ["c"] * n
    m = AnomalyMetrics(sorted(set(categories)), **kwargs)
    bounds = np.cumsum([0, *(splits or [n])])
    t_maps, t_masks = torchify(maps, masks)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        m.update(categories[a:b], t_maps[a:b], torch.from_numpy(scores[a:b]), t_masks[a:b],
                 torch.from_numpy(labels[a:b]))
    return m.compute()


CASES = ["random", "smooth", "ties", "constant", "tiny_regions", "one_region_per_image", "many_regions",
         "diagonal", "offset_signed"]


# -- exact equals the references -------------------------------------------------------------------
@pytest.mark.parametrize("name", CASES)
def test_exact_equals_references(name: str) -> None:
    maps, masks = case(name)
    scores, labels = image_scores(maps, masks)
    if labels.min() == labels.max():
        labels[0] = 1 - labels[0]
    expected = ref_all(maps, masks, scores, labels)
    got = run_collection(maps, masks, scores, labels, splits=[1, 2, 3])["c"]
    assert set(got) == set(METRIC_NAMES)
    for metric in METRIC_NAMES:
        assert got[metric] == pytest.approx(expected[metric], abs=TOL), metric


def test_constant_scores_give_the_tie_values_not_a_fallback() -> None:
    maps, masks = case("constant")
    got = run_collection(maps, masks, *image_scores(maps, masks))["c"]
    positive_rate = masks.mean()
    assert got["pixel_auroc"] == 0.5
    assert got["pixel_ap"] == pytest.approx(positive_rate, abs=1e-12)
    assert got["pixel_f1max"] == pytest.approx(2 * positive_rate / (1 + positive_rate), abs=1e-12)
    assert got["pixel_aupro"] == pytest.approx(0.15, abs=1e-12)  # the (0,0)-(1,1) segment cut at 0.3


def test_regions_are_8_connected_like_mvtec() -> None:
    maps, masks = case("diagonal")
    got = PixelAUPRO()
    got.update(*torchify(maps, masks))
    eight, four = ref_aupro(maps, masks, 8), ref_aupro(maps, masks, 4)
    assert abs(eight - four) > 1e-3  # the convention matters on this data
    assert float(got.compute()) == pytest.approx(eight, abs=TOL)


def test_image_metrics_match_sklearn_with_ties() -> None:
    rng = np.random.default_rng(3)
    scores = np.round(rng.random(300) * 10).astype(np.float32)
    labels = (rng.random(300) < 0.3 + 0.04 * scores).astype(int)
    metric = ImageMetrics()
    for part in np.array_split(np.arange(300), 7):
        metric.update(torch.from_numpy(scores[part]), torch.from_numpy(labels[part]))
    got = {k: float(v) for k, v in metric.compute().items()}
    expected = ref_binary(labels, scores)
    for key in ("auroc", "ap", "f1max"):
        assert got[f"image_{key}"] == pytest.approx(expected[key], abs=1e-12)


def test_single_metric_classes_return_scalars() -> None:
    metric = ImageAUROC()
    metric.update(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
    value = metric.compute()
    assert value.ndim == 0 and float(value) == pytest.approx(0.75)


# -- splits, pooling, requested metrics ------------------------------------------------------------
@pytest.mark.parametrize("mode", ["exact", "binned"])
def test_batch_splits_and_order_do_not_change_results(mode: str) -> None:
    maps, masks = case("smooth", seed=5)
    scores, labels = image_scores(maps, masks)
    whole = run_collection(maps, masks, scores, labels, mode=mode)
    ones = run_collection(maps, masks, scores, labels, splits=[1] * len(maps), mode=mode)
    order = np.random.default_rng(1).permutation(len(maps))
    shuffled = run_collection(maps[order], masks[order], scores[order], labels[order], splits=[4, 2], mode=mode)
    if mode == "exact":  # one sort of all samples: bit for bit
        assert whole == ones == shuffled
    else:  # same histogram; region weights summed in another order round differently (< 1e-12)
        for other in (ones, shuffled):
            for group, values in whole.items():
                assert values == pytest.approx(other[group], rel=1e-12, abs=0)


def test_pooled_is_one_curve_over_all_categories_and_differs_from_the_mean() -> None:
    maps_a, masks_a = case("smooth", seed=1)
    maps_b, masks_b = case("random", seed=2)
    maps_b = maps_b * 10 + 3  # category b scores on another scale: pooling mixes scales
    maps, masks = np.concatenate([maps_a, maps_b]), np.concatenate([masks_a, masks_b])
    scores, labels = image_scores(maps, masks)
    categories = ["a"] * len(maps_a) + ["b"] * len(maps_b)
    got = run_collection(maps, masks, scores, labels, splits=[5, 7], categories=categories)
    pooled = ref_all(maps, masks, scores, labels)
    for metric in METRIC_NAMES:
        assert got["pooled"][metric] == pytest.approx(pooled[metric], abs=TOL), metric
        assert got["mean"][metric] == pytest.approx((got["a"][metric] + got["b"][metric]) / 2, abs=1e-12)
    a = ref_all(maps_a, masks_a, *image_scores(maps_a, masks_a))
    assert got["a"]["pixel_aupro"] == pytest.approx(a["pixel_aupro"], abs=TOL)
    assert abs(got["pooled"]["pixel_auroc"] - got["mean"]["pixel_auroc"]) > 1e-3


def test_only_requested_metrics_are_computed_and_maps_are_optional() -> None:
    m = AnomalyMetrics(["a", "b"], metrics=("image_auroc", "image_f1max"))
    assert m.pixel is None
    m.update(["a", "b", "a", "b"], None, torch.tensor([0.1, 0.2, 0.9, 0.8]), None, torch.tensor([0, 0, 1, 1]))
    out = m.compute()
    assert set(out) == {"a", "b", "mean", "pooled"}
    assert all(set(v) == {"image_auroc", "image_f1max"} for v in out.values())
    assert out["pooled"]["image_auroc"] == 1.0


def test_pixel_metrics_without_aupro_skip_region_labelling(monkeypatch: pytest.MonkeyPatch) -> None:
    import anomaly.metrics.pixel as pixel

    monkeypatch.setattr(pixel, "region_sizes", lambda *_: pytest.fail("regions labelled without AUPRO"))
    maps, masks = case("random")
    metric = PixelMetrics(metrics=("pixel_auroc",))
    metric.update(*torchify(maps, masks))
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert float(metric.compute()["pixel_auroc"]) == pytest.approx(expected, abs=TOL)


def test_module_moves_and_keeps_state_dtypes() -> None:
    m = AnomalyMetrics(["a"]).to(torch.float16)
    maps, masks = case("random")
    scores, labels = image_scores(maps, masks)
    t_maps, t_masks = torchify(maps, masks)
    m.update(["a"] * len(maps), t_maps, torch.from_numpy(scores), t_masks, torch.from_numpy(labels))
    assert m.pixel[0].keys[-1].dtype == torch.int64
    assert m.compute()["a"]["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=TOL)


def test_reset_forgets_samples() -> None:
    maps, masks = case("random")
    scores, labels = image_scores(maps, masks)
    m = AnomalyMetrics(["c"])
    t_maps, t_masks = torchify(maps, masks)
    m.update(["c"] * 6, t_maps, torch.from_numpy(scores), t_masks, torch.from_numpy(labels))
    m.reset()
    m.update(["c"] * 3, t_maps[:3], torch.from_numpy(scores[:3]), t_masks[:3], torch.from_numpy(labels[:3]))
    got = m.compute()["c"]["pixel_auroc"]
    assert got == pytest.approx(roc_auc_score(masks[:3].ravel(), maps[:3].ravel()), abs=TOL)


# -- binned ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["smooth", "random", "ties", "many_regions", "offset"])
def test_binned_is_within_its_bound_and_1e3_of_exact(name: str) -> None:
    maps, masks = case("smooth" if name == "offset" else name, seed=11)
    if name == "offset":  # scores far from zero: the grid follows the range, not the magnitude
        maps = maps - np.float32(2e3)
    scores, labels = image_scores(maps, masks)
    labels[0] = 1 - labels[0] if labels.min() == labels.max() else labels[0]
    exact = run_collection(maps, masks, scores, labels, splits=[2, 4])["c"]
    m = AnomalyMetrics(["c"], mode="binned", bins=4096)
    t_maps, t_masks = torchify(maps, masks)
    for part in (slice(0, 3), slice(3, 6)):
        m.update(["c"] * 3, t_maps[part], torch.from_numpy(scores[part]), t_masks[part], torch.from_numpy(labels[part]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        binned = m.compute()["c"]
    for metric in METRIC_NAMES:
        error = abs(binned[metric] - exact[metric])
        assert error <= m.error_bounds["c"][metric] + 1e-12, metric
        assert error <= 1e-3, metric
    assert m.error_bounds["c"]["pixel_auroc"] <= 1e-3
    # The certified bound may exceed 1e-3 (F1-max on smooth maps) even when the error does not: then,
    # and only then, compute() warns.
    loose = any(bound > 1e-3 for group in m.error_bounds.values() for bound in group.values())
    assert any("binned values may be off" in str(w.message) for w in caught) == loose


@pytest.mark.parametrize(("name", "bins"), [("smooth", 8), ("offset_signed", 4096)])
def test_binned_bound_is_honest_when_bins_are_too_coarse(name: str, bins: int) -> None:
    maps, masks = case(name, seed=4)  # offset_signed: images near 0 and near 1e4 share one grid
    scores, labels = image_scores(maps, masks)
    exact = run_collection(maps, masks, scores, labels)["c"]
    with pytest.warns(UserWarning, match="binned values may be off"):
        m = AnomalyMetrics(["c"], mode="binned", bins=bins)
        t_maps, t_masks = torchify(maps, masks)
        m.update(["c"] * 6, t_maps, torch.from_numpy(scores), t_masks, torch.from_numpy(labels))
        binned = m.compute()["c"]
    assert m.error_bounds["c"]["pixel_auroc"] > 1e-3
    for metric in METRIC_NAMES:
        assert abs(binned[metric] - exact[metric]) <= m.error_bounds["c"][metric] + 1e-12, metric


def test_binned_outlier_coarsens_the_grid_but_keeps_the_bound() -> None:
    rng = np.random.default_rng(0)
    masks = blobs(rng, 4, 24, anomalous=1.0)
    maps = (1 + 1e-3 * rng.random(masks.shape) + 1e-3 * masks).astype(np.float32)
    maps[0, 0, 0] = 1e6  # one wild pixel stretches the range
    exact = PixelMetrics()
    binned = PixelMetrics(mode="binned", bins=1024)
    for metric in (exact, binned):
        metric.update(*torchify(maps, masks))
    values = exact.evaluation().values
    with pytest.warns(UserWarning, match="may be off"):
        result = binned.evaluation()
    for name, value in result.values.items():
        assert abs(value - values[name]) <= result.bounds[name] + 1e-12


def test_histograms_merge_exactly_whatever_the_order() -> None:
    rng = np.random.default_rng(2)
    parts = [torch.from_numpy((rng.standard_normal(500) * 10 ** k).astype(np.float32)) for k in range(-2, 3)]
    payload = [(torch.rand(500) < 0.2).float() * 3 for _ in parts]
    one = empty_histogram(256)
    for s, p in zip(parts, payload, strict=True):
        one = add_to_histogram(one, s, p, with_pro=True)
    separate = [add_to_histogram(empty_histogram(256), s, p, with_pro=True) for s, p in zip(parts, payload, strict=True)]
    merged = merge_histograms(separate[::-1])
    reversed_order = empty_histogram(256)
    for s, p in zip(parts[::-1], payload[::-1], strict=True):
        reversed_order = add_to_histogram(reversed_order, s, p, with_pro=True)
    for other in (merged, reversed_order):  # grids, counts and bin extremes are identical ...
        for field in (NEG, POS, BIN_MIN, BIN_MAX):
            assert torch.equal(_field(one, field), _field(other, field))
        assert torch.equal(one[:HEADER], other[:HEADER])
        # ... the float64 sums of region weights 1/|region| only up to rounding
        torch.testing.assert_close(_field(one, PRO), _field(other, PRO), rtol=1e-12, atol=0)


# -- degenerate inputs -----------------------------------------------------------------------------
def test_degenerate_categories_are_none_with_reasons() -> None:
    maps, masks = case("smooth", seed=7)
    maps, masks = maps[:4], masks[:4]
    masks[:2] = False
    masks[2:, 5:9, 5:9] = True
    normal_only = ["good"] * 2
    m = AnomalyMetrics(["good", "flawed", "empty_masks", "never_seen"])
    t_maps, t_masks = torchify(maps, masks)
    m.update(normal_only, t_maps[:2], torch.tensor([0.1, 0.2]), t_masks[:2], torch.tensor([0, 0]))
    m.update(["flawed"] * 4, t_maps, torch.tensor([0.1, 0.2, 0.8, 0.9]), t_masks, torch.tensor([0, 0, 1, 1]))
    m.update(["empty_masks"] * 2, t_maps[:2], torch.tensor([0.1, 0.7]), t_masks[:2], torch.tensor([0, 1]))
    with pytest.warns(UserWarning, match="undefined values are None"):
        out = m.compute()
    assert all(v is None for v in out["good"].values())
    assert "no anomalous test images" in m.reasons["good"]["image_auroc"]
    assert "all masks are zero" in m.reasons["good"]["pixel_aupro"]
    assert out["flawed"]["image_auroc"] == 1.0 and out["flawed"]["pixel_aupro"] is not None
    assert out["empty_masks"]["image_auroc"] == 1.0
    assert out["empty_masks"]["pixel_auroc"] is None
    assert "all masks are zero" in m.reasons["empty_masks"]["pixel_auroc"]
    assert all(v is None for v in out["never_seen"].values())
    assert "no test images were seen" in m.reasons["never_seen"]["image_ap"]
    assert all(v is None for v in out["mean"].values())
    assert "never_seen" in m.reasons["mean"]["pixel_aupro"]
    assert all(v is not None for v in out["pooled"].values())


def test_no_normal_images_or_pixels() -> None:
    metric = PixelMetrics()
    metric.update(torch.rand(2, 1, 4, 4), torch.ones(2, 1, 4, 4))
    with pytest.warns(UserWarning, match="no normal pixels"):
        values = metric.compute()
    assert all(math.isnan(float(v)) for v in values.values())
    image = ImageMetrics()
    image.update(torch.rand(3), torch.ones(3))
    with pytest.warns(UserWarning, match="no normal test images"):
        assert math.isnan(float(image.compute()["image_auroc"]))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_scores_name_the_batch(bad: float) -> None:
    m = AnomalyMetrics(["a", "b"])
    maps, masks = torch.rand(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    m.update(["a", "b"], maps, torch.rand(2), masks, torch.tensor([0, 1]))
    broken = maps.clone()
    broken[1, 0, 2, 2] = bad
    with pytest.raises(MetricInputError, match=r"anomaly_map of batch 1 \(categories: a, b\), category b holds"):
        m.update(["a", "b"], broken, torch.rand(2), masks, torch.tensor([0, 1]))
    with pytest.raises(MetricInputError, match="score of batch val-7"):
        m.update(["a", "b"], maps, torch.tensor([0.1, bad]), masks, torch.tensor([0, 1]), batch="val-7")


def test_bad_inputs_are_clear_errors() -> None:
    m = AnomalyMetrics(["a"])
    maps, masks = torch.rand(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    with pytest.raises(MetricInputError, match="unknown categories"):
        m.update(["a", "zzz"], maps, torch.rand(2), masks, torch.tensor([0, 1]))
    with pytest.raises(MetricInputError, match="same size"):
        m.update(["a", "a"], maps, torch.rand(2), torch.zeros(2, 1, 4, 5), torch.tensor([0, 1]))
    with pytest.raises(MetricInputError, match="0 \\(normal\\) or 1"):
        m.update(["a", "a"], maps, torch.rand(2), masks, torch.tensor([0, 2]))
    with pytest.raises(MetricInputError, match="mask must have one row per image"):
        m.update(["a", "a"], maps, torch.rand(2), None, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unknown metrics"):
        AnomalyMetrics(["a"], metrics=("pixel_pro",))
    with pytest.raises(ValueError, match="cannot be category names"):
        AnomalyMetrics(["mean"])


def test_negative_zero_ties_with_positive_zero() -> None:
    metric = ImageAUROC()
    metric.update(torch.tensor([0.0, -0.0]), torch.tensor([1, 0]))
    assert float(metric.compute()) == 0.5


def test_no_warning_for_clean_exact_results() -> None:
    maps, masks = case("smooth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_collection(maps, masks, *image_scores(maps, masks))


# -- exact kernels -----------------------------------------------------------------------------------
def tie_heavy_keys(seed: int = 0, n: int = 4000) -> tuple[np.ndarray, int, int, int]:
    """Keys with a heavy tie (40 % zeros), coarse levels and negative scores; (keys, P, N, R)."""
    rng = np.random.default_rng(seed)
    scores = np.where(rng.random(n) < 0.4, 0.0, np.round(rng.standard_normal(n) * 30) / 10).astype(np.float32)
    payload = np.where(rng.random(n) < 0.15 + 0.2 * (scores > 1), rng.integers(1, 9, n), 0).astype(np.float32)
    keys = np.empty(n, dtype=np.int64)
    pack_into(torch.from_numpy(scores), torch.from_numpy(payload), keys)
    positives = int(np.count_nonzero(payload))
    return keys, positives, n - positives, math.ceil(float(np.sum(1 / payload[payload > 0])))


def curve_values(parts, positives: int, negatives: int, regions: int) -> dict[str, float]:
    acc = CurveAccumulator(("auroc", "ap", "f1max", "aupro"), positives, negatives, regions)
    stream(parts, acc, with_pro=True)
    return acc.result()


@pytest.mark.parametrize("part", [1, 7, 64, 1000])
def test_parts_and_merged_runs_give_the_same_curve(part: int) -> None:
    keys, positives, negatives, regions = tie_heavy_keys()
    whole = np.sort(keys)
    expected = curve_values([whole], positives, negatives, regions)
    cut = list(array_parts(whole, part))
    assert all(int(a[0] >> 32) != int(b[-1] >> 32) for a, b in zip(cut[:-1], cut[1:], strict=True))  # no split group
    assert curve_values(cut, positives, negatives, regions) == pytest.approx(expected, rel=1e-12)
    runs = [np.sort(r) for r in np.split(keys, [5, 900, 901, 2500])]
    merged = list(merged_parts(runs, part))
    assert sum(m.size for m in merged) == keys.size
    if part < 1000:  # the 1,600 zeros fill whole buckets: summarised, not copied
        assert any(isinstance(m, Tie) for m in merged)
    assert curve_values(merged, positives, negatives, regions) == pytest.approx(expected, rel=1e-12)
    alone = CurveAccumulator(("aupro",), positives, negatives, regions)  # stops streaming past FPR 0.3
    stream(array_parts(whole, part), alone, with_pro=True)
    assert alone.result()["aupro"] == pytest.approx(expected["aupro"], rel=1e-12)


def test_torch_packing_equals_numpy_packing() -> None:
    scores = torch.tensor([1.5, -2.0, 0.0, 3.4e38, -1e-45, 7.0])
    payload = torch.tensor([0.0, 3.0, 1.0, 65536.0, 0.0, 2.0**24])
    keys = np.empty(6, dtype=np.int64)
    pack_into(scores, payload, keys)
    assert torch.equal(pack_torch(scores, payload), torch.from_numpy(keys))
    assert np.argsort(keys).tolist() == np.argsort(scores.numpy()).tolist() == [1, 4, 2, 0, 5, 3]
    assert (keys & 0xFFFFFFFF).tolist() == payload.long().tolist()
    sort_keys(keys)
    assert np.all(np.diff(keys) > 0)


@pytest.mark.parametrize("page", [1000, store.PAGE])
def test_exact_state_pages_and_updates_after_compute(monkeypatch: pytest.MonkeyPatch, page: int) -> None:
    monkeypatch.setattr(store, "PAGE", page)  # 1000: two 400-pixel images per page, then a new page
    maps, masks = case("smooth", seed=9)
    t_maps, t_masks = torchify(maps, masks)
    metric = PixelMetrics()
    for i in range(3):
        metric.update(t_maps[i:i + 1], t_masks[i:i + 1])
    assert len([k for k in metric.keys if k.numel()]) == (2 if page == 1000 else 1)  # pages, not updates
    first = {k: float(v) for k, v in metric.compute().items()}
    assert len([k for k in metric.keys if k.numel()]) == 1  # consolidated and sorted in place
    for i in range(3, 6):
        metric.update(t_maps[i:i + 1], t_masks[i:i + 1])
    second = {k: float(v) for k, v in metric.compute().items()}
    for data, values in ((slice(0, 3), first), (slice(0, 6), second)):
        fresh = PixelMetrics()
        fresh.update(t_maps[data], t_masks[data])
        assert values == {k: float(v) for k, v in fresh.compute().items()}
        assert values["pixel_aupro"] == pytest.approx(ref_aupro(maps[data], masks[data]), abs=TOL)

"""Synthesis strategies: mask contract, normal probability, determinism, foreground, bank, configs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from anomaly.conf import CONF_DIR as CONF
from anomaly.synthesis.bank import MANIFEST, Bank, BankError
from anomaly.synthesis.base import SynthesisConfigError
from anomaly.synthesis.cutpaste import CutPaste
from anomaly.synthesis.foreground import Foreground
from anomaly.synthesis.gallery import gallery_grid
from anomaly.synthesis.perlin import PerlinSynthesis
from anomaly.synthesis.perlin_noise import perlin_mask, perlin_noise
from anomaly.synthesis.sdas import SDASSynthesis
from anomaly.synthesis.textures import (
    EmptyTextureFolderError,
    FolderTextures,
    OtherCategoryTextures,
    TextureFileError,
)

H = W = 48


def noise_image(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def disc_image(h: int = H, w: int = W, bright_object: bool = True) -> np.ndarray:
    img = np.full((h, w, 3), 30 if bright_object else 220, np.uint8)
    cv2.circle(img, (w // 2, h // 2), min(h, w) // 3, (220, 200, 180) if bright_object else (20, 30, 40), -1)
    return img


def write_images(folder: Path, n: int, size: int = 32, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:03d}.png"), noise_image(seed + i, size, size))


def make_bank(root: Path, categories: list[str], size: tuple[int, int] = (H, W), n: int = 3) -> Bank:
    bank = Bank.create(root, categories, size)
    for c in categories:
        for i in range(n):
            bank.write(c, i, np.full((*size, 3), 40 * i + 10, np.uint8), s=0.1, seed=i)
    return bank


@pytest.fixture
def strategies(tmp_path: Path) -> dict[str, object]:
    write_images(tmp_path / "dtd" / "banded", 3)
    for c in ("a", "b"):
        write_images(tmp_path / "data" / c / "train" / "good", 2, seed=10)
    make_bank(tmp_path / "bank", ["a", "b"])
    return {
        "cutpaste": CutPaste(variant="cutpaste", normal_probability=0),
        "scar": CutPaste(variant="scar", normal_probability=0),
        "scar_object": CutPaste(variant="scar", foreground=Foreground(), normal_probability=0),
        "perlin": PerlinSynthesis(normal_probability=0),
        "perlin_fg": PerlinSynthesis(foreground=Foreground(), normal_probability=0),
        "perlin_folder": PerlinSynthesis(texture=FolderTextures(tmp_path / "dtd"), normal_probability=0),
        "perlin_other": PerlinSynthesis(texture=OtherCategoryTextures(tmp_path / "data"), normal_probability=0),
        "sdas": SDASSynthesis(tmp_path / "bank", foreground=Foreground(), normal_probability=0),
    }


NAMES = ["cutpaste", "scar", "scar_object", "perlin", "perlin_fg", "perlin_folder", "perlin_other", "sdas"]


@pytest.mark.parametrize("name", NAMES)
def test_mask_covers_exactly_the_changed_pixels(strategies: dict, name: str) -> None:
    strategy = strategies[name]
    rng = np.random.default_rng(0)
    for seed in range(6):
        image = noise_image(seed)
        before = image.copy()
        out, mask = strategy(image, rng, "a")
        assert np.array_equal(image, before), "the input must not be modified in place"
        assert out.shape == image.shape and out.dtype == np.uint8
        assert mask.shape == image.shape[:2] and mask.dtype == np.float32
        assert set(np.unique(mask)) <= {0.0, 1.0} and mask.any()
        outside = mask == 0
        assert np.array_equal(out[outside], image[outside]), "pixels outside the mask must be bit-identical"
        changed = (out != image).any(axis=-1)
        assert changed.sum() >= 0.7 * mask.sum(), "the mask must not claim many unchanged pixels"


@pytest.mark.parametrize("name", NAMES)
def test_normal_probability_one_returns_input_untouched(strategies: dict, name: str) -> None:
    strategy = strategies[name]
    strategy.normal_probability = 1.0
    assert strategy.probability == 1.0
    rng = np.random.default_rng(1)
    for seed in range(5):
        image = noise_image(seed)
        out, mask = strategy(image, rng, "a")
        assert np.array_equal(out, image) and out.dtype == np.uint8 and not mask.any()


def test_normal_probability_is_the_share_of_normal_images() -> None:
    rng = np.random.default_rng(0)
    for p in (0.0, 0.5):
        strategy = CutPaste(normal_probability=p)
        normal = sum(not strategy(noise_image(i), rng)[1].any() for i in range(200))
        assert abs(normal / 200 - p) < 0.1


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_anomaly(strategies: dict, name: str) -> None:
    strategy = strategies[name]
    image = noise_image(3)
    a = strategy(image, np.random.default_rng(7), "b")
    b = strategy(image, np.random.default_rng(7), "b")
    c = strategy(image, np.random.default_rng(8), "b")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not (np.array_equal(a[0], c[0]) and np.array_equal(a[1], c[1]))


def test_perlin_mask_scales_and_threshold() -> None:
    rng = np.random.default_rng(0)
    n = perlin_noise((50, 70), (4, 8), rng)
    assert n.shape == (50, 70) and -1.5 < n.min() < 0 < n.max() < 1.5
    coarse = np.mean([perlin_mask((64, 64), rng, (0, 0), 0.5, 0).mean() for _ in range(30)])
    assert 0.0 < coarse < 0.5
    assert not perlin_mask((64, 64), rng, (3, 3), 0.99, 0).any()


def reference_perlin(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Perlin noise written out the direct way: each pixel's four corner gradients by one 2-D index."""
    (h, w), (ry, rx) = shape, res
    big_h, big_w = -(-h // ry) * ry, -(-w // rx) * rx
    angles = 2 * np.pi * rng.random((ry + 1, rx + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    ys, xs = np.arange(h) * (ry / big_h), np.arange(w) * (rx / big_w)
    yi, xi = ys.astype(np.int64)[:, None], xs.astype(np.int64)[None, :]
    yf, xf = (ys % 1.0)[:, None], (xs % 1.0)[None, :]
    dots = {(dy, dx): grads[yi + dy, xi + dx, 0] * (yf - dy) + grads[yi + dy, xi + dx, 1] * (xf - dx)
            for dy in (0, 1) for dx in (0, 1)}
    fy, fx = (6 * t**5 - 15 * t**4 + 10 * t**3 for t in (yf, xf))
    left = dots[0, 0] + fy * (dots[1, 0] - dots[0, 0])
    right = dots[0, 1] + fy * (dots[1, 1] - dots[0, 1])
    return (np.sqrt(2) * (left + fx * (right - left))).astype(np.float32)


@pytest.mark.parametrize(("shape", "res"), [((256, 256), (4, 8)), ((256, 256), (32, 1)), ((100, 77), (3, 5)),
                                            ((128, 128), (1, 1))])
def test_perlin_noise_equals_the_direct_computation(shape: tuple[int, int], res: tuple[int, int]) -> None:
    fast = perlin_noise(shape, res, np.random.default_rng(3))
    assert np.array_equal(fast, reference_perlin(shape, res, np.random.default_rng(3)))


def test_foreground_segments_bright_and_dark_objects() -> None:
    fg = Foreground()
    for bright in (True, False):
        image = disc_image(64, 64, bright)
        truth = (np.abs(image.astype(int) - image[0, 0].astype(int)).sum(-1) > 0)
        mask = fg(image, "obj")
        iou = (mask & truth).sum() / (mask | truth).sum()
        assert iou > 0.9
    assert Foreground(texture_categories=["wood"])(disc_image(), "wood").all()


def ring_image(side: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A bright disc (220) in a dim ring (90) on a dark background (30): Otsu's threshold falls between ring and
    disc, the triangle threshold just above the background. Returns the image, the disc and disc + ring."""
    yy, xx = np.mgrid[:side, :side]
    r = np.hypot(yy - side / 2 + 0.5, xx - side / 2 + 0.5)
    grey = np.where(r < 0.22 * side, 220, np.where(r < 0.34 * side, 90, 30)).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2), r < 0.22 * side, r < 0.34 * side


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_realnets_foreground_rule_picks_the_threshold_and_polarity_per_mvtec_category() -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=realnet_mvtec", "data=mvtec", "data.root=x"])
    official = instantiate(cfg.synthesis.foreground)
    image, disc, disc_and_ring = ring_image()
    for category in ("hazelnut", "metal_nut", "toothbrush"):  # triangle, bright object
        assert iou(official(image, category), disc_and_ring) > 0.97, category
    assert iou(official(image, "pill"), disc) > 0.97  # Otsu, bright object
    for category in ("grid", "bottle", "capsule", "screw", "zipper"):  # Otsu, inverted: below the threshold
        assert iou(official(image, category), ~disc) > 0.97, category
    for category in ("carpet", "leather", "tile", "wood", "cable", "transistor"):
        assert official(image, category).all(), category
    ours = instantiate(compose_synthesis("perlin", []).foreground)  # Otsu everywhere, polarity from the border
    assert iou(ours(image, "hazelnut"), disc) > 0.97 and iou(ours(image, "grid"), disc) > 0.97


def test_exact_kernels_are_realnets_square_6_and_odd_ones_ours() -> None:
    mask = np.zeros((256, 256), np.uint8)
    mask[40:200, 40:46] = 1     # a 6-px bar: square(6) opening keeps it, a 7-px one removes it
    mask[40:200, 100:105] = 1   # a 5-px bar: removed by both
    mask[40:200, 150:220] = 1
    mask[100:105, 150:220] = 0  # a 5-px gap: square(6) closing fills it
    frac = 6 / 256
    exact = Foreground(kernel="exact").morphology(mask, frac, frac, 256).astype(bool)
    odd = Foreground().morphology(mask, frac, frac, 256).astype(bool)
    block = np.zeros((256, 256), bool)
    block[40:200, 150:220] = True
    assert np.array_equal(exact[:, :60], mask[:, :60].astype(bool)) and not exact[:, 90:110].any()
    assert np.array_equal(exact[:, 140:], block[:, 140:])
    assert not odd[:, :60].any() and not odd[:, 90:110].any()
    with pytest.raises(SynthesisConfigError, match=r"^synthesis\.foreground\.kernel='even' is unknown"):
        Foreground(kernel="even")


def test_foreground_keeps_perlin_anomalies_on_the_object() -> None:
    strategy = PerlinSynthesis(foreground=Foreground(), normal_probability=0)
    image = disc_image(64, 64)
    object_mask = Foreground()(image, "obj")
    rng = np.random.default_rng(0)
    for _ in range(10):
        _, mask = strategy(image, rng, "obj")
        assert mask.any() and not (mask.astype(bool) & ~object_mask).any()


def test_foreground_centres_cutpaste_scars_on_the_object() -> None:
    image = disc_image(128, 128)
    object_mask = Foreground()(image, "obj")
    rng = np.random.default_rng(0)

    def centres_on_object(strategy: CutPaste, category: str = "obj") -> list[bool]:
        found = []
        for _ in range(40):
            _, mask = strategy(image, rng, category)
            ys, xs = np.nonzero(mask)
            found.append(bool(object_mask[int(round(ys.mean())), int(round(xs.mean()))]))
        return found

    assert all(centres_on_object(CutPaste(variant="scar", foreground=Foreground(), normal_probability=0)))
    assert not all(centres_on_object(CutPaste(variant="scar", normal_probability=0))), "anywhere without a foreground"
    texture = CutPaste(variant="scar", foreground=Foreground(texture_categories=["wood"]), normal_probability=0)
    assert not all(centres_on_object(texture, "wood")), "a texture category's scars go anywhere"


def test_bad_options_raise_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyTextureFolderError, match=r"synthesis\.texture\.root=.*no images"):
        FolderTextures(tmp_path / "empty")
    with pytest.raises(EmptyTextureFolderError, match=r"synthesis\.texture\.root"):
        FolderTextures(tmp_path / "missing")
    with pytest.raises(SynthesisConfigError, match=r"synthesis\.beta"):
        PerlinSynthesis(beta=(0.5, 1.5))
    with pytest.raises(SynthesisConfigError, match=r"synthesis\.normal_probability"):
        CutPaste(normal_probability=1.5)
    with pytest.raises(SynthesisConfigError, match=r"synthesis\.variant"):
        CutPaste(variant="triangle")
    with pytest.raises(ValueError, match="uint8"):
        CutPaste()(noise_image().astype(np.float32), np.random.default_rng(0))


def test_sdas_bank_for_other_categories_or_size_is_refused(tmp_path: Path) -> None:
    make_bank(tmp_path / "bank", ["a"], size=(32, 32))
    strategy = SDASSynthesis(tmp_path / "bank", normal_probability=0)
    rng = np.random.default_rng(0)
    with pytest.raises(BankError, match=r"synthesis\.bank=.*32x32.*48x48"):
        strategy(noise_image(), rng, "a")
    with pytest.raises(BankError, match=r"synthesis\.bank=.*categories \['a'\], not \['zz'\]"):
        strategy(noise_image(0, 32, 32), rng, "zz")
    with pytest.raises(BankError, match=r"synthesis\.bank=.*not a bank"):
        SDASSynthesis(tmp_path / "nowhere")
    resized = SDASSynthesis(tmp_path / "bank", normal_probability=0, resize=True)
    out, mask = resized(noise_image(), rng, "a")
    assert out.shape == (H, W, 3) and mask.any()
    with pytest.raises(BankError, match="categories"):
        strategy.validate(["a", "b"], (32, 32))


def test_bank_resume_after_a_kill_has_no_duplicate_or_partial_entries(tmp_path: Path) -> None:
    root = tmp_path / "bank"
    bank = make_bank(root, ["a", "b"], n=2)
    # leftovers of a writer killed at each possible point
    (root / "a" / ".000002.png.123.tmp").write_bytes(b"half")                       # mid image write
    cv2.imwrite(str(root / "b" / "000002.png"), np.zeros((H, W, 3), np.uint8))      # image, no manifest line
    with open(root / MANIFEST, "a") as f:
        f.write(json.dumps({"category": "a", "index": 0, "file": "a/000000.png", "s": 0.1, "seed": 0}) + "\n")
        f.write('{"category": "a", "index": 3, "fi')                                 # torn last line
    assert sorted((e.category, e.index) for e in bank.entries()) == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    resumed = Bank.create(root, ["a", "b"], (H, W))
    assert not list(root.rglob("*.tmp")) and not (root / "b" / "000002.png").exists()
    lines = (root / MANIFEST).read_text().splitlines()
    assert len(lines) == len({(json.loads(x)["category"], json.loads(x)["index"]) for x in lines}) == 4
    resumed.write("a", 2, np.zeros((H, W, 3), np.uint8), 0.2, 5)
    assert resumed.done("a") == {0, 1, 2} and len(Bank.open(root)) == 5
    with pytest.raises(BankError, match=r"bank_dir=.*categories"):
        Bank.create(root, ["a", "c"], (H, W))
    with pytest.raises(BankError, match=r"bank_dir=.*48x48.*64x64"):
        Bank.create(root, ["a"], (64, 64))


def test_unreadable_texture_or_bank_image_names_the_file_and_the_option(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        write_images(tmp_path / "data" / c / "train" / "good", 1)
    broken = tmp_path / "data" / "b" / "train" / "good" / "000.png"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated
    with pytest.raises(TextureFileError, match=rf"^Texture file {re.escape(str(broken))} \(found by "
                                               rf"synthesis\.texture\.root={re.escape(str(tmp_path / 'data'))} "
                                               r"with pattern '\{category\}/train/good'\).*replace or delete"):
        OtherCategoryTextures(tmp_path / "data")((H, W), rng, "a")
    make_bank(tmp_path / "bank", ["a"], n=1)
    (tmp_path / "bank" / "a" / "000000.png").write_bytes(b"")
    with pytest.raises(TextureFileError, match=rf"^Bank image file {re.escape(str(tmp_path / 'bank' / 'a'))}/000000\.png "
                                               rf"\(found by synthesis\.bank={re.escape(str(tmp_path / 'bank'))}\)"
                                               r".*python -m anomaly\.synthesize"):
        SDASSynthesis(tmp_path / "bank", normal_probability=0)(noise_image(), rng, "a")


def compose_synthesis(option: str, overrides: list[str]) -> object:
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("gallery", overrides=[f"synthesis={option}", "images=x", *overrides])
    return cfg.synthesis


@pytest.mark.parametrize("option", ["none", "cutpaste", "perlin", "sdas"])
def test_every_synthesis_config_instantiates_and_runs(option: str, tmp_path: Path) -> None:
    make_bank(tmp_path / "bank", ["a"])
    node = compose_synthesis(option, [f"synthesis.bank={tmp_path / 'bank'}"] if option == "sdas" else [])
    if option == "none":
        assert not node.get("_target_")
        return
    strategy = instantiate(node)
    assert strategy.normal_probability == 0.5
    strategy.normal_probability = 0.0
    out, mask = strategy(noise_image(), np.random.default_rng(0), "a")
    assert out.shape == (H, W, 3) and mask.any()


def test_texture_sources_switch_by_config(tmp_path: Path) -> None:
    write_images(tmp_path / "dtd", 2)
    node = compose_synthesis("perlin", ["synthesis/texture=folder", f"synthesis.texture.root={tmp_path / 'dtd'}"])
    assert isinstance(instantiate(node).texture, FolderTextures)


def test_gallery_grid_shows_image_anomaly_and_mask() -> None:
    images = [noise_image(i) for i in range(3)]
    grid = gallery_grid(CutPaste(normal_probability=1.0), images, np.random.default_rng(0), gap=2)
    assert grid.shape == (3 * H + 2 * 2, 3 * W + 2 * 2, 3)
    row = grid[:H]
    assert np.array_equal(row[:, :W], images[0]) and not np.array_equal(row[:, W + 2:2 * W + 2], images[0])

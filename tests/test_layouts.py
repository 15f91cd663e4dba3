"""Layout readers and image I/O on small trees in the real data sets' exact layouts."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from anomaly.data.errors import DataError
from anomaly.data.image_io import read_image, read_mask
from anomaly.data.layouts import BTADLayout, FolderLayout, MTDLayout, MVTecLayout, VisaLayout


def write(path: Path, size: tuple[int, int] = (6, 8), value: int = 128, channels: int = 3) -> Path:
    """Write a tiny image (any extension OpenCV knows) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = size if channels == 1 else (*size, channels)
    assert cv2.imwrite(str(path), np.full(shape, value, np.uint8))
    return path


def names(records: list) -> list[str]:
    return [r.image.name for r in records]


# --------------------------------------------------------------------------------------------- MVTec


@pytest.fixture()
def mvtec(tmp_path: Path) -> Path:
    root = tmp_path / "mvtec"
    for cat in ("bottle", "screw"):
        for i in range(3):
            write(root / cat / "train" / "good" / f"{i:03d}.png")
        for i in range(2):
            write(root / cat / "test" / "good" / f"{i:03d}.png")
        for defect, n in (("broken_large", 2), ("contamination", 1)):
            for i in range(n):
                write(root / cat / "test" / defect / f"{i:03d}.png")
                write(root / cat / "ground_truth" / defect / f"{i:03d}_mask.png", value=255, channels=1)
    (root / "license.txt").write_text("cc by-nc-sa")
    return root


def test_mvtec_records(mvtec: Path) -> None:
    layout = MVTecLayout()
    assert layout.categories(mvtec) == ["bottle", "screw"]
    train = layout.records(mvtec, "bottle", "train")
    assert names(train) == ["000.png", "001.png", "002.png"]
    assert all(
        r.label == 0 and r.mask is None and r.defect == "good" and r.category == "bottle" for r in train
    )
    test = layout.records(mvtec, "bottle", "test")
    assert [(r.defect, r.label) for r in test] == [("good", 0)] * 2 + [("broken_large", 1)] * 2 + [
        ("contamination", 1)
    ]
    for r in test[2:]:
        assert r.mask == mvtec / "bottle" / "ground_truth" / r.defect / f"{r.image.stem}_mask.png"
        assert r.image.parent.name == r.defect


def test_mvtec_bad_input(mvtec: Path, tmp_path: Path) -> None:
    layout = MVTecLayout()
    with pytest.raises(DataError, match=r"data.root=.*nowhere does not exist; set data.root"):
        layout.categories(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty.* is empty"):
        layout.categories(tmp_path / "empty")
    with pytest.raises(DataError, match=r"data.category=bottel does not exist.*available: bottle, screw"):
        layout.records(mvtec, "bottel", "test")
    with pytest.raises(DataError, match=r"single category folder; set data.root to its parent"):
        layout.categories(mvtec / "bottle")
    with pytest.raises(DataError, match="split='val'"):
        layout.records(mvtec, "bottle", "val")
    (mvtec / "screw" / "ground_truth" / "contamination" / "000_mask.png").unlink()
    with pytest.raises(
        DataError, match=r"screw/test/contamination/000.png has no mask \(expected .*000_mask.png\)"
    ):
        layout.records(mvtec, "screw", "test")
    for image in (mvtec / "bottle" / "train" / "good").iterdir():
        image.unlink()
    (mvtec / "bottle" / "train" / "good").rmdir()
    with pytest.raises(DataError, match=r"bottle/train/good does not exist; the layout expects"):
        layout.records(mvtec, "bottle", "train")


# ---------------------------------------------------------------------------------------------- VisA


@pytest.fixture()
def visa(tmp_path: Path) -> Path:
    root = tmp_path / "visa"
    rows = ["object,split,label,image,mask"]
    for cat in ("candle", "pcb1"):
        base = root / cat / "Data"
        for i in range(4):
            write(base / "Images" / "Normal" / f"{i:04d}.JPG")
            rows.append(f"{cat},{'train' if i < 3 else 'test'},normal,{cat}/Data/Images/Normal/{i:04d}.JPG,")
        for i in range(2):
            write(base / "Images" / "Anomaly" / f"{i:03d}.JPG")
            write(base / "Masks" / "Anomaly" / f"{i:03d}.png", value=255, channels=1)
            rows.append(
                f"{cat},test,anomaly,{cat}/Data/Images/Anomaly/{i:03d}.JPG,{cat}/Data/Masks/Anomaly/{i:03d}.png"
            )
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def test_visa_records(visa: Path) -> None:
    layout = VisaLayout()
    assert layout.categories(visa) == ["candle", "pcb1"]
    train = layout.records(visa, "pcb1", "train")
    assert names(train) == ["0000.JPG", "0001.JPG", "0002.JPG"]
    assert all(r.label == 0 and r.mask is None and r.category == "pcb1" for r in train)
    test = layout.records(visa, "pcb1", "test")
    assert [(r.image.name, r.label, r.defect) for r in test] == [
        ("0003.JPG", 0, "good"),
        ("000.JPG", 1, "anomaly"),
        ("001.JPG", 1, "anomaly"),
    ]
    assert test[1].mask == visa / "pcb1" / "Data" / "Masks" / "Anomaly" / "000.png"
    assert read_mask(test[1].mask, read_image(test[1].image).shape[:2]).min() == 1


def test_visa_bad_input(visa: Path) -> None:
    with pytest.raises(DataError, match=r"data.category=capsule does not exist.*available: candle, pcb1"):
        VisaLayout().records(visa, "capsule", "test")
    with pytest.raises(DataError, match=r"split_csv/2cls_fewshot.csv does not exist; put split_csv/1cls.csv"):
        VisaLayout("split_csv/2cls_fewshot.csv").categories(visa)
    (visa / "candle" / "Data" / "Masks" / "Anomaly" / "001.png").unlink()
    with pytest.raises(DataError, match=r"candle/Data/Images/Anomaly/001.JPG has no mask"):
        VisaLayout().records(visa, "candle", "test")
    (visa / "split_csv" / "1cls.csv").write_text("object,split,image\ncandle,train,x.JPG\n")
    with pytest.raises(DataError, match=r"1cls.csv lacks the column\(s\) label, mask"):
        VisaLayout().categories(visa)


# ---------------------------------------------------------------------------------------------- BTAD


@pytest.fixture()
def btad(tmp_path: Path) -> Path:
    root = tmp_path / "BTech_Dataset_transformed"
    for cat, image_ext, mask_ext in (("01", ".bmp", ".png"), ("02", ".png", ".png"), ("03", ".bmp", ".bmp")):
        for i in range(3):
            write(root / cat / "train" / "ok" / f"{i:04d}{image_ext}")
        write(root / cat / "test" / "ok" / f"0000{image_ext}")
        for i in range(2):
            write(root / cat / "test" / "ko" / f"{i:04d}{image_ext}")
            write(root / cat / "ground_truth" / "ko" / f"{i:04d}{mask_ext}", value=255, channels=1)
    return root


def test_btad_records(btad: Path) -> None:
    layout = BTADLayout()
    assert layout.categories(btad) == ["01", "02", "03"]
    for cat, image_ext, mask_ext in (("01", ".bmp", ".png"), ("02", ".png", ".png"), ("03", ".bmp", ".bmp")):
        assert names(layout.records(btad, cat, "train")) == [f"{i:04d}{image_ext}" for i in range(3)]
        test = layout.records(btad, cat, "test")
        assert [(r.label, r.defect) for r in test] == [(0, "good"), (1, "ko"), (1, "ko")]
        assert test[0].mask is None
        for r in test[1:]:
            assert r.mask == btad / cat / "ground_truth" / "ko" / f"{r.image.stem}{mask_ext}"


def test_btad_bad_input(btad: Path) -> None:
    with pytest.raises(DataError, match=r"data.category=1 does not exist.*available: 01, 02, 03"):
        BTADLayout().records(btad, "1", "train")
    (btad / "01" / "ground_truth" / "ko" / "0001.png").unlink()
    with pytest.raises(DataError, match=r"01/test/ko/0001.bmp has no mask"):
        BTADLayout().records(btad, "01", "test")


# ----------------------------------------------------------------------------------------------- MTD


MTD_DEFECTS = {"MT_Blowhole": 2, "MT_Break": 1, "MT_Crack": 1, "MT_Fray": 1, "MT_Uneven": 1}


def make_mtd(root: Path, n_free: int = 20, reverse: bool = False) -> Path:
    free = [f"exp{1 + i % 3}_num_{4700 + 7 * i}" for i in range(n_free)]
    for name in reversed(free) if reverse else free:
        write(root / "MT_Free" / "Imgs" / f"{name}.jpg")
        write(root / "MT_Free" / "Imgs" / f"{name}.png", value=0, channels=1)
    for folder, n in MTD_DEFECTS.items():
        for i in range(n):
            write(root / folder / "Imgs" / f"exp6_num_{1000 + i}.jpg")
            write(root / folder / "Imgs" / f"exp6_num_{1000 + i}.png", value=255, channels=1)
    return root


def test_mtd_records_and_split(tmp_path: Path) -> None:
    root = make_mtd(tmp_path / "Magnetic-tile-defect-datasets.")
    layout = MTDLayout(train_ratio=0.6, seed=3)
    assert layout.categories(root) == ["magnetic_tile"]
    train = layout.records(root, "magnetic_tile", "train")
    test = layout.records(root, "magnetic_tile", "test")
    assert len(train) == 12 and all(r.label == 0 and r.mask is None for r in train)
    good, bad = [r for r in test if r.label == 0], [r for r in test if r.label == 1]
    assert len(good) == 8 and not {r.image for r in good} & {r.image for r in train}
    assert sorted({r.defect for r in bad}) == ["blowhole", "break", "crack", "fray", "uneven"]
    assert len(bad) == sum(MTD_DEFECTS.values())
    assert all(r.mask == r.image.with_suffix(".png") and r.image.suffix == ".jpg" for r in bad)
    listing = layout.split_listing(root)
    assert len(listing) == 20 and sum(split == "train" for _, split in listing) == 12
    assert {root / p for p, s in listing if s == "train"} == {r.image for r in train}
    # The split depends on names and seed only: same on a tree created in another order.
    other = make_mtd(tmp_path / "copy", reverse=True)
    assert MTDLayout(train_ratio=0.6, seed=3).split_listing(other) == listing
    assert MTDLayout(train_ratio=0.6, seed=4).split_listing(root) != listing


def test_mtd_bad_input(tmp_path: Path) -> None:
    root = make_mtd(tmp_path / "mtd")
    with pytest.raises(DataError, match="train_ratio=1.5"):
        MTDLayout(train_ratio=1.5)
    with pytest.raises(DataError, match=r"data.category=tiles does not exist.*available: magnetic_tile"):
        MTDLayout().records(root, "tiles", "test")
    (root / "MT_Crack" / "Imgs" / "exp6_num_1000.png").unlink()
    with pytest.raises(DataError, match=r"MT_Crack/Imgs/exp6_num_1000.jpg has no mask"):
        MTDLayout().records(root, "magnetic_tile", "test")
    write(tmp_path / "wrong" / "Imgs" / "a.jpg")
    with pytest.raises(DataError, match=r"wrong has no MT_Free/Imgs folder"):
        MTDLayout().categories(tmp_path / "wrong")


# -------------------------------------------------------------------------------------------- Folder


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "mine"
    for i in range(10):
        write(root / "ok" / f"img_{i}.jpg")
    for i in range(2):
        write(root / "ok_test" / f"t_{i}.png")
    write(root / "bad" / "x1.png")
    write(root / "bad" / "dent" / "d1.png")
    write(root / "masks" / "x1_mask.png", value=255, channels=1)
    write(root / "masks" / "dent" / "d1.png", value=255, channels=1)
    return root


def test_folder_records(folder: Path) -> None:
    layout = FolderLayout("ok", "bad", "masks", test_ratio=0.3, seed=1, category="widget")
    assert layout.categories(folder) == ["widget"]
    train = layout.records(folder, "widget", "train")
    test = layout.records(folder, "widget", "test")
    good = [r for r in test if r.label == 0]
    assert len(train) == 7 and len(good) == 3 and not {r.image for r in train} & {r.image for r in good}
    bad = [r for r in test if r.label == 1]
    assert [(r.image.name, r.defect, r.mask.relative_to(folder).as_posix()) for r in bad] == [
        ("x1.png", "abnormal", "masks/x1_mask.png"),
        ("d1.png", "dent", "masks/dent/d1.png"),
    ]
    assert names(
        FolderLayout("ok", "bad", "masks", test_ratio=0.3, seed=1).records(folder, "folder", "train")
    ) == names(train)
    separate = FolderLayout("ok", "bad", None, normal_test_dir="ok_test")
    assert len(separate.records(folder, "folder", "train")) == 10
    test = separate.records(folder, "folder", "test")
    assert [(r.image.name, r.label, r.mask) for r in test] == [
        ("t_0.png", 0, None),
        ("t_1.png", 0, None),
        ("x1.png", 1, None),
        ("d1.png", 1, None),
    ]


def test_folder_bad_input(folder: Path) -> None:
    with pytest.raises(DataError, match=r"normal_dir=good resolves to .*good, which does not exist"):
        FolderLayout("good", "bad", None).categories(folder)
    with pytest.raises(DataError, match="test_ratio=0"):
        FolderLayout("ok", "bad", None, test_ratio=0)
    (folder / "masks" / "dent" / "d1.png").unlink()
    with pytest.raises(DataError, match=r"bad/dent/d1.png has no mask"):
        FolderLayout("ok", "bad", "masks").records(folder, "folder", "test")


# ------------------------------------------------------------------------------------------ image_io


def test_read_image_conversions(tmp_path: Path) -> None:
    bgr = np.zeros((5, 7, 3), np.uint8)
    bgr[..., 0] = 10  # blue in OpenCV's order
    bgr[..., 2] = 200
    cv2.imwrite(str(tmp_path / "c.png"), bgr)
    rgb = read_image(tmp_path / "c.png")
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8 and tuple(rgb[0, 0]) == (200, 0, 10)
    gray = read_image(write(tmp_path / "g.png", value=77, channels=1))
    assert gray.shape == (6, 8, 3) and (gray == 77).all()
    rgba = np.dstack([bgr, np.full((5, 7), 3, np.uint8)])
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    assert tuple(read_image(tmp_path / "a.png")[0, 0]) == (200, 0, 10)
    cv2.imwrite(str(tmp_path / "d.png"), np.full((4, 4), 65535, np.uint16))
    deep = read_image(tmp_path / "d.png")
    assert deep.dtype == np.uint8 and (deep == 255).all()


def test_read_image_bad_files(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"broken.png is not a readable image"):
        read_image(tmp_path / "broken.png")
    (tmp_path / "notes.jpg").write_text("hello")
    with pytest.raises(DataError, match=r"notes.jpg is not a readable image"):
        read_image(tmp_path / "notes.jpg")
    with pytest.raises(DataError, match=r"missing.png does not exist"):
        read_image(tmp_path / "missing.png")


def test_read_mask(tmp_path: Path) -> None:
    values = np.array([[0, 1, 255], [0, 0, 128]], np.uint8)
    cv2.imwrite(str(tmp_path / "m.png"), values)
    mask = read_mask(tmp_path / "m.png", (2, 3))
    assert mask.dtype == np.uint8 and mask.tolist() == [[0, 1, 1], [0, 0, 1]]
    cv2.imwrite(str(tmp_path / "rgb.png"), np.dstack([values * 0, values, values * 0]))
    assert read_mask(tmp_path / "rgb.png", (2, 3)).tolist() == mask.tolist()
    with pytest.raises(
        DataError, match=r"Mask .*m.png is 3×2 \(w×h\) but its image .*img.png is 8×6; give each mask"
    ):
        read_mask(tmp_path / "m.png", (6, 8), image=tmp_path / "img.png")

"""User errors end the program with one ``Error: <sentence>`` line; bugs keep their traceback."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from hydra.utils import instantiate
from torch.utils.data import DataLoader, Dataset

from anomaly.data.dataset import AnomalyDataset
from anomaly.data.errors import DataError
from anomaly.data.image_io import read_image
from anomaly.data.record import Record
from anomaly.synthesis.perlin import PerlinSynthesis
from anomaly.synthesis.textures import FolderTextures, TextureFileError
from anomaly.utils.errors import unwrap_worker_error, user_errors


def error_lines(run: Callable[[], object], capsys: pytest.CaptureFixture[str]) -> list[str]:
    """What ``user_errors`` prints to stderr for ``run``, checking it exits with code 1."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited, user_errors():
        run()
    assert exited.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err.splitlines()


def write_png(path: Path, size: int = 16) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)
    return path.read_bytes()


def truncated_png(path: Path) -> Path:
    data = write_png(path, 32)
    path.write_bytes(data[: len(data) // 2])
    return path


# ---------------------------------------------------------------- a. crop larger than the image
def test_crop_larger_than_image_is_one_line_naming_both_options(capsys: pytest.CaptureFixture[str]) -> None:
    # Through hydra.utils.instantiate, as the configs build it: the wrapper's cause is what is shown.
    node = {"_target_": "anomaly.data.transforms.geometry", "image_size": 64, "crop_size": [80, 56]}
    lines = error_lines(lambda: instantiate(node), capsys)
    assert lines == ["Error: data.crop_size=[80, 56] is larger than data.image_size=64; set data.crop_size no "
                     "larger than data.image_size (or data.crop_size=null for no crop)."]


# ---------------------------------------------------------------- b. corrupt texture file
def test_corrupt_texture_file_is_one_line_naming_the_file(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "dtd"
    corrupt = root / "banded" / "broken.jpg"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    strategy = PerlinSynthesis(texture=FolderTextures(root), normal_probability=0)
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(TextureFileError, match=re.escape(f"Texture file {corrupt} (found by synthesis.texture.root={root})")):
        strategy(image, np.random.default_rng(0), "wood")
    lines = error_lines(lambda: strategy(image, np.random.default_rng(0), "wood"), capsys)
    assert lines == [f"Error: Texture file {corrupt} (found by synthesis.texture.root={root}) is missing, corrupt "
                     "or not an image; replace or delete the file, or point synthesis.texture.root at another folder."]


# ---------------------------------------------------------------- c. truncated image in a DataLoader worker
def test_truncated_image_is_a_data_error_naming_the_file(tmp_path: Path) -> None:
    image = truncated_png(tmp_path / "train" / "good" / "000.png")
    with pytest.raises(DataError, match=rf"^Image file {re.escape(str(image))} is not a readable image: it is truncated"):
        read_image(image)


def truncated_dataset(tmp_path: Path) -> tuple[AnomalyDataset, Path]:
    good = tmp_path / "wood" / "train" / "good"
    write_png(good / "000.png")
    image = truncated_png(good / "001.png")
    records = [Record(good / name, None, 0, "wood", "good") for name in ("000.png", "001.png")]
    return AnomalyDataset(records, image_size=16), image


def test_truncated_image_in_a_dataloader_worker_is_one_line(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    dataset, image = truncated_dataset(tmp_path)
    loader = DataLoader(dataset, batch_size=1, num_workers=1)
    lines = error_lines(lambda: list(loader), capsys)
    assert lines == [f"Error: Image file {image} is not a readable image: it is truncated (an interrupted copy "
                     "or download?); copy it again, or replace or remove the file."]


def test_traceback_on_request_keeps_the_worker_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANOMALY_TRACEBACK", "1")
    dataset, image = truncated_dataset(tmp_path)
    with pytest.raises(DataError, match=r"Caught DataError in DataLoader worker process 0(.|\n)*Traceback"), \
            user_errors():
        list(DataLoader(dataset, batch_size=1, num_workers=1))


class Buggy(Dataset):
    """A data set with a bug: a plain ValueError (not ours) and a ZeroDivisionError."""

    def __init__(self, error: type[Exception]) -> None:
        self.error = error

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> int:
        raise self.error("a bug, not the user's to fix")


@pytest.mark.parametrize("error", [ValueError, ZeroDivisionError])
def test_bug_in_a_dataloader_worker_keeps_its_traceback(error: type[Exception]) -> None:
    with pytest.raises(error, match="Caught .* in DataLoader worker process 0"), user_errors():
        list(DataLoader(Buggy(error), num_workers=1))


def test_worker_error_torch_could_not_rebuild_is_still_recognised() -> None:
    # torch raises RuntimeError(message) when the worker's exception class cannot be built from the message.
    from torch._utils import ExceptionWrapper

    try:
        raise DataError("Image file x.png is truncated; copy it again.")
    except DataError:
        wrapper = ExceptionWrapper(sys.exc_info(), where="in DataLoader worker process 3")
    with pytest.raises(DataError) as rebuilt:
        wrapper.reraise()
    fallback = RuntimeError(str(rebuilt.value))
    assert unwrap_worker_error(rebuilt.value) == (DataError, "Image file x.png is truncated; copy it again.")
    assert unwrap_worker_error(fallback) == (DataError, "Image file x.png is truncated; copy it again.")
    assert unwrap_worker_error(DataError("Caught nothing")) is None
    assert unwrap_worker_error(RuntimeError(str(rebuilt.value).replace("anomaly.data.errors.", "elsewhere."))) is None

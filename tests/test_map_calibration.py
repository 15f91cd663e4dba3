"""MapCalibration: per-category per-pixel statistics of normal maps and z-scores against them."""

from __future__ import annotations

import pytest
import torch

from anomaly.nn.map_calibration import CalibrationError, MapCalibration


def test_statistics_do_not_depend_on_how_the_maps_were_batched_and_match_torch() -> None:
    maps = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    categories = ["a", "b"] * 5
    whole, split = MapCalibration(), MapCalibration()
    whole.add(categories, maps)
    for i in (3, 0, 7, 1, 9, 5, 2, 8, 6, 4):
        split.add(categories[i:i + 1], maps[i:i + 1])
    whole.finish()
    split.finish()
    for c, rows in (("a", maps[0::2]), ("b", maps[1::2])):
        torch.testing.assert_close(whole.statistics[c][0], split.statistics[c][0])
        torch.testing.assert_close(whole.statistics[c][0], rows.mean(0))
        std = rows.std(0)
        torch.testing.assert_close(whole.statistics[c][1], std + 1e-3 * std.mean(), rtol=1e-5, atol=1e-6)
    z = whole(maps[:2], ["a", "b"])
    torch.testing.assert_close(z[0], (maps[0] - maps[0::2].mean(0)) / whole.statistics["a"][1])
    assert whole.covers(["a", "b"]) and not whole.covers(["c"])


def test_too_few_images_or_unknown_categories_fail_naming_the_option() -> None:
    calibration = MapCalibration("model.calibrate")
    calibration.add(["a"], torch.zeros(1, 1, 4, 4))
    with pytest.raises(CalibrationError, match="model.calibrate=true needs at least 2 normal training images of 'a'"):
        calibration.finish()
    calibration.add(["a", "a"], torch.zeros(2, 1, 4, 4))
    calibration.finish()
    assert torch.isfinite(calibration(torch.ones(1, 1, 4, 4), ["a"])).all()  # no spread: the floor, not a NaN
    with pytest.raises(CalibrationError, match=r"no normal maps of \['b'\]"):
        calibration(torch.zeros(1, 1, 4, 4), ["b"])

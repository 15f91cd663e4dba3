"""Heatmap panels: input | [reconstruction |] overlay | ground truth."""

from __future__ import annotations

import torch

from anomaly.callbacks.heatmaps import overlay_panel


def test_panel_shows_the_reconstruction_column_when_given() -> None:
    image = torch.rand(3, 16, 20)
    anomaly_map = torch.zeros(1, 16, 20)
    anomaly_map[0, 4:8, 4:8] = 1
    mask = (anomaly_map > 0).float()
    plain = overlay_panel(image, anomaly_map, mask, 0.0, 1.0)
    assert plain.shape == (16, 60, 3)
    recon = torch.zeros(3, 16, 20)
    with_recon = overlay_panel(image, anomaly_map, mask, 0.0, 1.0, recon)
    assert with_recon.shape == (16, 80, 3)
    assert (with_recon[:, 20:40] == 0).all()  # the reconstruction column
    assert (with_recon[:, :20] == plain[:, :20]).all()
    truth = with_recon[:, 60:]
    assert (truth[4, 4] == (255, 0, 0)).all() and not (truth[12, 12] == (255, 0, 0)).all()  # mask outline

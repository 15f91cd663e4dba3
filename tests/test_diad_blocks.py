"""DiAD's diffusion blocks: sizes, zero-initialised wiring, gradients, sampling, scoring, loading."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from anomaly.nn.diffusion import (
    Conditioning,
    ControlledDenoiser,
    SemanticGuidedBranch,
    SpatialFeatureFusion,
    WeightsError,
    build_autoencoder,
    build_unet,
    ddim_reconstruct,
    make_scheduler,
    q_sample,
)
from anomaly.nn.diffusion.control import hint_channels
from anomaly.nn.diffusion.presets import DiffusionConfigError
from anomaly.nn.diffusion.sampling import denoising_target
from anomaly.nn.ema import ModuleEMA
from anomaly.nn.feature_distance import FeatureDistance, pooled_max

pytestmark = pytest.mark.one_thread


TINY = {
    "block_out_channels": [16, 32, 32],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "cross_attention_dim": 16,
    "attention_head_dim": 4,
    "sample_size": 8,
}


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tiny_denoiser(
    control: str = "mid", sff: bool = True, seed: int = 0, train_encoder: bool = False, sff_input: str = "features"
) -> ControlledDenoiser:
    torch.manual_seed(seed)
    unet = build_unet("cpu", **TINY)
    branch = SemanticGuidedBranch(unet, control=control, sff=sff, downsampling=4, sff_input=sff_input)
    return ControlledDenoiser(unet, branch, Conditioning("empty", dim=16), train_encoder=train_encoder)


def inputs(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (torch.randn(batch, 4, 8, 8, generator=g), torch.tensor([10, 900])[:batch],
            torch.randn(batch, 3, 32, 32, generator=g))


def test_paper_preset_has_the_papers_sizes_on_the_meta_device() -> None:
    with torch.device("meta"):
        unet = build_unet("sd15")
        branch = SemanticGuidedBranch(unet, control="mid", sff=True, downsampling=8, copy_weights=False)
        autoencoder = build_autoencoder("kl-f8")
    for got, paper in [(count(unet), 859.5e6), (count(branch.controlnet) + count(branch.source_convs), 361.3e6), (count(branch.sff), 110.6e6),
                       (count(autoencoder), 83.7e6)]:
        assert abs(got - paper) / paper < 0.01, (got, paper)
    # SFF: three 640→1280 and six 1280→1280 stride-2 3×3 convs, as the official code.
    assert branch.sources == [6, 7, 8] and branch.targets == [9, 10, 11]
    assert branch.sff.source_channels == [640, 1280, 1280]


@pytest.mark.parametrize("control", ["mid", "all"])
def test_zero_initialised_branch_leaves_the_unet_output_unchanged(control: str) -> None:
    denoiser = tiny_denoiser(control)
    x, t, hint = inputs()
    context = denoiser.context(2)
    with torch.no_grad():
        plain = denoiser.unet(x, t, encoder_hidden_states=context).sample
        controlled = denoiser(x, t, hint)
    torch.testing.assert_close(controlled, plain, rtol=0, atol=1e-6)


def test_gradients_reach_only_the_trainable_parts() -> None:
    denoiser = tiny_denoiser("all")
    x, t, hint = inputs()
    optimizer = torch.optim.SGD([p for p in denoiser.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):  # the second step: zero convs are non-zero, so gradients flow into the branch
        optimizer.zero_grad()
        (denoiser(x, t, hint) - x).pow(2).mean().backward()
        optimizer.step()
    unet = denoiser.unet
    frozen = [unet.conv_in, unet.time_embedding, unet.down_blocks, unet.mid_block]
    assert all(p.grad is None and not p.requires_grad for m in frozen for p in m.parameters())
    for module in [unet.up_blocks, unet.conv_out, denoiser.branch.controlnet.controlnet_cond_embedding,
                   denoiser.branch.controlnet.down_blocks, denoiser.branch.controlnet.controlnet_mid_block,
                   denoiser.branch.sff]:
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0


def test_a_from_scratch_unet_can_train_its_encoder_too() -> None:
    denoiser = tiny_denoiser("mid", train_encoder=True)
    x, t, hint = inputs()
    (denoiser(x, t, hint) - x).pow(2).mean().backward()
    unet = denoiser.unet
    for module in [unet.conv_in, unet.time_embedding, unet.down_blocks, unet.mid_block, unet.up_blocks]:
        assert all(p.grad is not None for p in module.parameters())
    assert "unet" in denoiser.trainable_modules()  # so the optimiser and the EMA cover the encoder
    assert "unet" not in tiny_denoiser("mid").trainable_modules()


def test_mid_control_only_feeds_the_last_level_and_the_middle_block() -> None:
    denoiser = tiny_denoiser("mid")
    with torch.no_grad():
        for p in denoiser.branch.controlnet.controlnet_down_blocks.parameters():
            p.normal_(0, 0.1)
    x, t, hint = inputs()
    with torch.no_grad():
        down, mid = denoiser.branch(x, t, denoiser.context(2), hint)
    assert len(down) == 6 and denoiser.branch.targets == [4, 5] and denoiser.branch.sources == [2, 3]
    assert all(float(d.abs().max()) == 0 for d in down[:4])
    assert all(float(d.abs().max()) > 0 for d in down[4:])
    assert tuple(down[4].shape) == (2, 32, 2, 2) and tuple(mid.shape) == (2, 32, 2, 2)


def test_sff_is_zero_at_init_and_fuses_every_source_into_every_target() -> None:
    sff = SpatialFeatureFusion([8, 16], [16, 16, 16])
    assert sum(1 for m in sff.modules() if isinstance(m, nn.Conv2d)) == 6
    sources = [torch.zeros(1, 8, 8, 8), torch.zeros(1, 16, 8, 8)]
    targets = [torch.randn(1, 16, 4, 4) for _ in range(3)]
    torch.testing.assert_close(sff(sources, targets)[1], torch.nn.functional.silu(targets[1]))
    with torch.no_grad():
        sff.down[2][0][0].weight.normal_()
    fused = sff([torch.randn(1, 8, 8, 8), torch.zeros(1, 16, 8, 8)], targets)
    torch.testing.assert_close(fused[0], torch.nn.functional.silu(targets[0]))
    assert not torch.allclose(fused[2], torch.nn.functional.silu(targets[2]))
    with pytest.raises(ValueError, match="SFF expects"):
        sff(sources[:1], targets)


@pytest.mark.parametrize(("spacing", "t_start", "n_steps"), [("leading", 999, 10), ("trailing", 999, 10),
                                                            ("leading", 500, 20)])
def test_ddim_round_trip_with_a_perfect_noise_predictor_recovers_z0(spacing: str, t_start: int, n_steps: int) -> None:
    scheduler = make_scheduler(timestep_spacing=spacing)
    z0 = torch.randn(3, 4, 8, 8)
    alphas = scheduler.alphas_cumprod

    def perfect(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = alphas[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * z0) / (1 - a).sqrt()

    torch.testing.assert_close(ddim_reconstruct(perfect, scheduler, z0, t_start, n_steps), z0, rtol=1e-4, atol=1e-4)
    # A predictor that is wrong does not: the test can fail.
    wrong = ddim_reconstruct(lambda x, t: torch.zeros_like(x), scheduler, z0, t_start, n_steps)
    assert (wrong - z0).abs().mean() > 0.1


@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction"])
def test_the_denoising_target_leads_ddim_from_an_anomalous_latent_to_its_normal_source(kind: str) -> None:
    scheduler = make_scheduler(prediction_type=kind)
    g = torch.Generator().manual_seed(0)
    normal, anomalous, noise = (torch.randn(3, 4, 8, 8, generator=g) for _ in range(3))
    t = torch.tensor([10, 500, 990])
    # Noised from its own latent, the target is the usual one...
    x_t = q_sample(scheduler, normal, t, noise)
    usual = {"epsilon": noise, "sample": normal, "v_prediction": scheduler.get_velocity(normal, noise, t)}[kind]
    torch.testing.assert_close(denoising_target(scheduler, normal, noise, t, x_t), usual, rtol=1e-4, atol=1e-4)
    # ...noised from an anomaly, DDIM's x̂0 of the target is the normal source, not the anomaly.
    x_t = q_sample(scheduler, anomalous, t, noise)
    target = denoising_target(scheduler, normal, noise, t, x_t)
    for i in range(3):
        scheduler.set_timesteps(1000)
        step = scheduler.step(target[i : i + 1], int(t[i]), x_t[i : i + 1], eta=0.0)
        torch.testing.assert_close(step.pred_original_sample, normal[i : i + 1], rtol=1e-3, atol=1e-3)
    with pytest.raises(DiffusionConfigError, match="prediction_type"):
        denoising_target(make_scheduler(prediction_type="flow"), normal, noise, t, x_t)


def test_noising_to_999_keeps_about_seven_percent_of_the_signal_and_bad_t_start_fails() -> None:
    scheduler = make_scheduler()
    z0 = torch.ones(1, 1, 1, 1)
    kept = q_sample(scheduler, z0, torch.tensor([999]), torch.zeros_like(z0))
    assert 0.06 < float(kept) < 0.075
    with pytest.raises(ValueError, match="model.t_start"):
        ddim_reconstruct(lambda x, t: x, scheduler, z0, 1000, 10)
    with pytest.raises(ValueError, match="model.t_start=0 is below"):
        ddim_reconstruct(lambda x, t: x, scheduler, z0, 0, 10)


def test_context_kinds() -> None:
    assert Conditioning("empty", dim=8, tokens=3)(2).shape == (2, 3, 8)
    learned = Conditioning("learned", dim=8)
    assert learned(4).requires_grad and learned(4).shape == (4, 1, 8)
    classes = Conditioning("class", dim=8, num_classes=5)
    out = classes(2, torch.tensor([0, 3]))
    assert out.shape == (2, 1, 8) and not torch.equal(out[0], out[1])
    with pytest.raises(ValueError, match="needs the category"):
        classes(2)
    with pytest.raises(ValueError, match="model.context.kind=clip"):
        Conditioning("clip")
    with pytest.raises(ValueError, match="model.context.path"):
        Conditioning("file", path="/nonexistent/context.pt")


def test_ema_averages_only_the_given_modules_and_swaps() -> None:
    live = nn.Linear(2, 2)
    frozen = nn.Linear(2, 2)
    ema = ModuleEMA({"live": live}, decay=0.5)
    assert not any(p is q for p in ema.parameters() for q in frozen.parameters())
    ema.update()  # first update copies
    start = live.weight.detach().clone()
    with torch.no_grad():
        live.weight.add_(2.0)
    ema.update()
    with ema.applied():
        torch.testing.assert_close(live.weight, start + 1.0)
    torch.testing.assert_close(live.weight, start + 2.0)
    assert ema.updates == 2 and "average.n_averaged" in ema.state_dict()


def test_hint_encoder_matches_the_autoencoder_factor() -> None:
    assert hint_channels(8) == (16, 32, 96, 256) and hint_channels(4) == (16, 32, 96)
    with pytest.raises(ValueError, match="downsamples by 16"):
        hint_channels(16)


class _Pixels(nn.Module):
    """A stand-in backbone: the image itself at full and half resolution."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"a": x, "b": torch.nn.functional.avg_pool2d(x, 2)}


def test_feature_distance_is_zero_for_a_perfect_reconstruction_and_peaks_at_the_defect() -> None:
    scorer = FeatureDistance(_Pixels(), layers=["a", "b"], sigma=1.0, pool_size=4, pool_iters=2)
    image = torch.rand(2, 3, 32, 32) + 0.5
    recon = image.clone()
    recon[1, :, 20:26, 4:10] = torch.rand(3, 6, 6) - 0.5
    anomaly_map, score = scorer(image, recon)
    assert anomaly_map.shape == (2, 1, 32, 32)
    assert float(anomaly_map[0].abs().max()) < 1e-5 and score[1] > 0.1
    peak = int(anomaly_map[1, 0].argmax())
    assert 18 <= peak // 32 <= 28 and 2 <= peak % 32 <= 12
    resized = FeatureDistance(_Pixels(), layers=["a"], sigma=1.0, resize=64)(image, recon)[0]
    assert resized.shape == (2, 1, 32, 32) and float(resized[0].abs().max()) < 1e-5
    with pytest.raises(KeyError, match="no layer"):
        FeatureDistance(_Pixels(), layers=["c"])(image, recon)


def test_the_l2_distance_is_the_mean_squared_difference_where_cosine_ignores_scale() -> None:
    image = torch.rand(1, 3, 16, 16) + 0.5
    brighter = image * 2  # same direction: no cosine distance, a large squared one
    cosine = FeatureDistance(_Pixels(), layers=["a"], sigma=0.0, pool_iters=0)
    l2 = FeatureDistance(_Pixels(), layers=["a"], sigma=0.0, pool_iters=0, distance="l2")
    assert float(cosine(image, brighter)[0].abs().max()) < 1e-5
    torch.testing.assert_close(l2(image, brighter)[0], image.pow(2).mean(dim=1, keepdim=True))
    with pytest.raises(ValueError, match="model.scoring.distance=manhattan is not valid"):
        FeatureDistance(_Pixels(), distance="manhattan")


def test_pooled_max_smooths_before_taking_the_maximum() -> None:
    spike = torch.zeros(1, 1, 16, 16)
    spike[0, 0, 8, 8] = 64.0
    assert float(pooled_max(spike, 8, 0)) == 64.0
    assert float(pooled_max(spike, 8, 1)) == pytest.approx(1.0)


def test_missing_weights_fail_with_the_option_named(tmp_path) -> None:
    with pytest.raises(WeightsError, match="model.autoencoder.weights=.*diad_autoencoder"):
        build_autoencoder("cpu", weights=str(tmp_path / "missing.ckpt"), option="model.autoencoder")
    with pytest.raises(WeightsError, match="model.unet.weights=.*model.download=true"):
        build_unet("sd15", weights="stable-diffusion-v1-5/not-cached-here")
    with pytest.raises(WeightsError, match="without a diffusers"):
        build_unet("cpu", weights=str(tmp_path))


def test_autoencoder_loads_from_a_folder_and_a_project_checkpoint(tmp_path) -> None:
    torch.manual_seed(0)
    source = build_autoencoder("cpu")
    source.save_pretrained(tmp_path / "sd" / "vae")
    loaded = build_autoencoder("kl-f8", weights=str(tmp_path / "sd"))  # the folder's own config wins
    torch.testing.assert_close(loaded.encoder.conv_in.weight, source.encoder.conv_in.weight)
    state = {f"autoencoder.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": state, "anomaly_config": {"model": {"autoencoder": {"preset": "cpu", "fit_steps": 5}}}},
               tmp_path / "a.ckpt")
    from_ckpt = build_autoencoder("kl-f8", weights=str(tmp_path / "a.ckpt"))
    torch.testing.assert_close(from_ckpt.decoder.conv_out.weight, source.decoder.conv_out.weight)


def test_feature_latent_standardises_and_splits_back_to_the_backbones_features() -> None:
    from anomaly.nn.backbone import FeatureExtractor
    from anomaly.nn.diffusion.feature_latent import FeatureDecoder, FeatureGrid

    torch.manual_seed(0)
    backbone = FeatureExtractor("efficientnet_lite0", ["blocks.1", "blocks.2", "blocks.4"], weights="none")
    latent = FeatureGrid(backbone, downsampling=4, resize=64)
    images = torch.randn(6, 3, 32, 32)
    with pytest.raises(DiffusionConfigError, match="never trained"):
        latent.encode(images)
    latent.fit(images)
    z = latent.encode(images)
    assert z.shape == (6, 24 + 40 + 112, 8, 8)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(176), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(dim=(0, 2, 3)), torch.ones(176), atol=1e-3, rtol=0)
    features = backbone(torch.nn.functional.interpolate(images, size=64, mode="bilinear"))
    split = latent.split(z)
    # blocks.1 (16²) is area-pooled, blocks.2 (8²) kept, blocks.4 (4²) upsampled to the 8² grid
    torch.testing.assert_close(split["blocks.1"], torch.nn.functional.avg_pool2d(features["blocks.1"], 2), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(split["blocks.2"], features["blocks.2"], atol=1e-4, rtol=1e-4)
    assert FeatureDecoder(176, 4, 32)(z).shape == (6, 3, 32, 32)
    with pytest.raises(DiffusionConfigError, match=r"model.latent.layers has \['blocks.3'\]"):
        FeatureGrid(backbone, layers=["blocks.3"])


def test_the_viewing_decoder_learns_images_back_from_the_feature_latent() -> None:
    from anomaly.nn.backbone import FeatureExtractor
    from anomaly.nn.diffusion.feature_latent import FeatureDecoder, FeatureGrid

    torch.manual_seed(0)
    latent = FeatureGrid(FeatureExtractor("efficientnet_lite0", ["blocks.1", "blocks.2"], weights="none"), downsampling=4)
    ramp = torch.linspace(-1, 1, 32)
    x, y = ramp[None, :].expand(32, 32), ramp[:, None].expand(32, 32)
    images = torch.stack([torch.stack([x * a, y * b, torch.full((32, 32), float(c))]) for a, b, c in torch.rand(8, 3) * 2 - 1])
    latent.fit(images)
    z = latent.encode(images)
    decoder = FeatureDecoder(latent.channels, 4, 32)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    first = float((decoder(z) - images).abs().mean().detach())
    for _ in range(150):
        loss = (decoder(z) - images).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.3 * first


def test_the_feature_cache_returns_the_same_latents_and_skips_the_backbone_on_hits() -> None:
    from anomaly.nn.backbone import FeatureExtractor
    from anomaly.nn.diffusion.feature_latent import FeatureGrid

    backbone = FeatureExtractor("efficientnet_lite0", ["blocks.1"], weights="none")
    calls: list[int] = []
    backbone.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    latent = FeatureGrid(backbone, downsampling=4, cache=3)
    images = torch.randn(4, 3, 32, 32)
    latent.fit(images)
    plain = latent.encode(images)
    calls.clear()
    torch.testing.assert_close(latent.encode(images[:2], cached=True), plain[:2])
    torch.testing.assert_close(latent.encode(images, cached=True), plain)  # two hits, two misses (one kept)
    torch.testing.assert_close(latent.encode(images[[3, 0]], cached=True), plain[[3, 0]])
    assert calls == [2, 2, 1]  # the cache holds at most 3 images


def train_briefly(denoiser: ControlledDenoiser, steps: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A few AdamW steps of the trainable parts towards a random target; returns the inputs used."""
    params = [p for m in denoiser.trainable_modules().values() for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    sample, t, hint = inputs()
    target = torch.randn_like(sample)
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(denoiser(sample, t, hint), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return sample, t, hint


@pytest.mark.parametrize(("sff_input", "learns"), [("features", True), ("zero_conv", False)])
def test_sff_learns_from_the_first_steps_only_when_it_reads_the_features(sff_input: str, learns: bool) -> None:
    """Under control=mid the official wiring (SFF reads the zero convs' outputs) never leaves zero."""
    denoiser = tiny_denoiser(control="mid", sff_input=sff_input)
    sff = denoiser.branch.sff
    sample, t, hint = train_briefly(denoiser)
    largest = max(float(p.detach().abs().max()) for p in sff.parameters())
    with torch.no_grad():
        trained = denoiser(sample, t, hint)
        saved = [p.detach().clone() for p in sff.parameters()]
        for p in sff.parameters():
            p.zero_()
        silent = denoiser(sample, t, hint)  # the same model with SFF adding nothing
        for p, value in zip(sff.parameters(), saved, strict=True):
            p.copy_(value)
    if learns:
        assert largest > 1e-4 and float((trained - silent).abs().max()) > 1e-6
    else:
        assert largest == 0.0 and torch.equal(trained, silent)


def test_sff_off_and_on_give_different_models_after_training() -> None:
    outputs = {}
    for sff in (True, False):
        denoiser = tiny_denoiser(control="mid", sff=sff)
        sample, t, hint = train_briefly(denoiser)
        with torch.no_grad():
            outputs[sff] = denoiser(sample, t, hint)
    assert float((outputs[True] - outputs[False]).abs().max()) > 1e-6


def _tiny_stable_diffusion_text_parts(root) -> None:  # noqa: ANN001
    """A Stable Diffusion folder's tokenizer/ and text_encoder/ at toy size (a 4-token vocabulary)."""
    import json

    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    (root / "tokenizer").mkdir(parents=True)
    (root / "tokenizer" / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "a": 3}))
    (root / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(root / "tokenizer" / "vocab.json"), str(root / "tokenizer" / "merges.txt")).save_pretrained(
        root / "tokenizer"
    )
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=4, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=8, bos_token_id=0, eos_token_id=1,
                            pad_token_id=1)
    CLIPTextModel(config).save_pretrained(root / "text_encoder")


def test_the_clip_context_is_the_text_encoders_embedding_of_the_empty_prompt_and_is_cached(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import CLIPTextModel

    import anomaly.nn.diffusion.clip_context as clip_context

    folder = tmp_path / "sd"
    _tiny_stable_diffusion_text_parts(folder)
    cache = tmp_path / "cache"
    context = Conditioning("clip_empty", dim=16, text_encoder=str(folder), cache_dir=str(cache))
    encoder = CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
    ids = torch.tensor([[0] + [1] * 7])  # <|startoftext|> then <|endoftext|> padding to 8 tokens
    with torch.no_grad():
        expected = encoder(input_ids=ids).last_hidden_state
    torch.testing.assert_close(context(3), expected.expand(3, -1, -1))
    assert context.length == 8 and len(list(cache.glob("*.pt"))) == 1
    monkeypatch.setattr(clip_context, "_load", lambda *a: pytest.fail("the cached embedding was not used"))
    again = Conditioning("clip_empty", dim=16, text_encoder=str(folder), cache_dir=str(cache))
    torch.testing.assert_close(again(1), expected)
    monkeypatch.undo()
    # Rebuilt for a checkpoint, it reads nothing and takes its values from the state dict.
    restored = Conditioning("clip_empty", dim=16, tokens=8, read=False)
    restored.load_state_dict(context.state_dict())
    torch.testing.assert_close(restored(1), expected)
    with pytest.raises(WeightsError, match=r"model.context.text_encoder=.*has no tokenizer/ or text_encoder/"):
        Conditioning("clip_empty", dim=16, text_encoder=str(tmp_path), cache_dir=str(cache))
    with pytest.raises(WeightsError, match="embeds into 16 channels but the UNet's cross_attention_dim is 768"):
        Conditioning("clip_empty", dim=768, text_encoder=str(folder), cache_dir=str(cache))
    with pytest.raises(WeightsError, match="needs model.context.text_encoder"):
        Conditioning("clip_empty", dim=16)

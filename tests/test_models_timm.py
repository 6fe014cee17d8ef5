"""caformer_unet, convnext_unet and vit_fwi (the timm models): cards, shapes, range, gradients, bf16,
checkpoint rebuild, preset sizes, the grid alignment of the U-Net encoders, the ViT's shot tiling, and
the timm import past a broken torchvision."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from gwi.models.ensemble import enable_mc_dropout
from gwi.models.registry import build_from_args, count_parameters, create_model, model_args, model_card
from gwi.models.timm_compat import import_timm
from gwi.models.timm_unet import TimmUNet, coordinates, resample_time
from gwi.models.vit_fwi import tile_shots

MODELS = ("caformer_unet", "convnext_unet", "vit_fwi")
PAPERS = {"caformer_unet": "Yu et al", "convnext_unet": "Liu et al", "vit_fwi": "Darcet et al"}
# millions of parameters, as the modules' docstrings state (+-3%)
PARAMS_M = {("caformer_unet", "default"): 26.4, ("caformer_unet", "large"): 100.7,
            ("convnext_unet", "default"): 31.5, ("convnext_unet", "large"): 95.3,
            ("vit_fwi", "default"): 21.9, ("vit_fwi", "large"): 86.5}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def seismic(b: int) -> torch.Tensor:
    return torch.randn(b, 5, 1000, 70)  # (B, 5, 1000, 70) normalised seismic


# --------------------------------------------------------------------------------------------- timm import


def test_import_timm_past_this_machines_torchvision():
    timm = import_timm()
    assert callable(timm.create_model)
    import os

    assert os.environ.get("HF_HUB_OFFLINE")
    # whether torchvision imports on its own here decides which path import_timm must have taken
    plain = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True, check=False)
    stub = sys.modules.get("torchvision._meta_registrations")
    if plain.returncode == 0:
        assert stub is not None and hasattr(stub, "__file__"), "a working torchvision must not be patched"
    else:
        assert "does not exist" in plain.stderr  # the broken CPU-torch + CUDA-torchvision pair
        assert stub is not None and not hasattr(stub, "__file__"), "the meta registrations should be the empty stub"
    assert "torchvision" in sys.modules


def test_import_timm_reraises_other_torchvision_errors(monkeypatch):
    from gwi.models import timm_compat

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name == "torchvision":
                raise RuntimeError("some other failure")

    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Refuse(), *sys.meta_path])
    with pytest.raises(RuntimeError, match="some other failure"):
        timm_compat._import_torchvision()


# --------------------------------------------------------------------------------------------- all three


@pytest.mark.parametrize("name", MODELS)
def test_card(name):
    card = model_card(name)
    assert card.requires == ("timm",) and card.equivariance == "none" and card.precision == "bf16"
    assert card.mc_dropout
    assert {"tiny", "default", "large"} <= set(card.presets)
    assert "Kaggle" in card.reference and PAPERS[name] in card.reference
    assert all(p.get("dropout", 0) > 0 for p in card.presets.values())  # MC dropout in every preset


def check_grads(model) -> None:
    for n, p in model.named_parameters():
        assert p.grad is not None, f"{n}: no gradient"
        assert torch.isfinite(p.grad).all(), f"{n}: non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{n}: gradient is all zero"


@pytest.mark.parametrize("name", MODELS)
def test_tiny_shape_range_and_grads(name):
    model = create_model(name, "tiny").train()
    y = model(seismic(3))
    assert y.shape == (3, 1, 70, 70)
    assert torch.isfinite(y).all() and y.abs().max() <= 1.0
    (y - torch.rand_like(y) * 2 + 1).abs().mean().backward()
    check_grads(model)


@pytest.mark.parametrize("name", MODELS)
def test_tiny_bf16_autocast(name):
    model = create_model(name, "tiny").train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(seismic(2))
    assert y.shape == (2, 1, 70, 70)
    assert torch.isfinite(y.float()).all() and y.float().abs().max() <= 1.0
    y.float().mean().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n


@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_rebuild_gives_identical_outputs(name):
    model = create_model(name, "tiny").train()
    x = seismic(2)
    model(x).mean().backward()  # a train-mode pass moves the BatchNorm statistics off their initial values
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.eval()
    rebuilt = build_from_args(name, model_args(name, "tiny"))
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


@pytest.mark.parametrize("name", MODELS)
def test_mc_dropout_gives_different_samples(name):
    model = create_model(name, "tiny").eval()
    x = seismic(1)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # eval: deterministic
        assert enable_mc_dropout(model) > 0  # what gwi's ensemble does: dropout on, BatchNorm still frozen
        assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", MODELS)
def test_rejects_wrong_input_shape(name):
    model = create_model(name, "tiny")
    with pytest.raises(ValueError, match="expected"):
        model(torch.randn(2, 5, 1000, 69))


@pytest.mark.parametrize("name, preset", sorted(PARAMS_M))
def test_preset_sizes(name, preset):
    with torch.device("meta"):  # no memory, no init cost: only the shapes
        model = create_model(name, preset)
    n = count_parameters(model) / 1e6
    assert math.isclose(n, PARAMS_M[name, preset], rel_tol=0.03), n


# --------------------------------------------------------------------------------------------- U-Nets


@pytest.mark.parametrize("name, rows", [("caformer_unet", 291), ("convnext_unet", 288)])
def test_stage_maps_sit_on_the_velocity_grid(name, rows):
    model = create_model(name, "tiny").eval()
    assert isinstance(model, TimmUNet) and model.rows == rows  # 71 * 4 + the stem kernel's height
    x = seismic(1)
    with torch.no_grad():
        maps = model.features(x)
        assert [tuple(m.shape[-2:]) for m in maps] == [(72, 72), (36, 36), (18, 18), (9, 9)]
        # rows stand for depth: a change in the last 10% of the recording (late, deep arrivals) leaves
        # the shallow rows of the first stage untouched and moves the deep ones
        late = x.clone()
        late[:, :, 900:] += 1.0
        moved = (model.features(late)[0] - maps[0]).abs().amax(dim=(0, 1, 3))  # (72,) per row
    assert moved[:50].max() == 0 and moved[-5:].min() > 0, moved
    # and columns stand for receivers: a change on the last receivers leaves the first columns alone
    right = x.clone()
    right[..., 60:] += 1.0
    with torch.no_grad():
        moved = (model.features(right)[0] - maps[0]).abs().amax(dim=(0, 1, 2))  # (72,) per column
    assert moved[:45].max() == 0 and moved[-5:].min() > 0, moved


def test_default_stage_maps_on_meta():
    with torch.device("meta"):
        model = create_model("caformer_unet", "default")
        x = torch.empty(1, 5, model.rows, 78)  # already resampled and padded: the encoder alone
        shapes = [tuple(m.shape[-2:]) for m in model.encoder(x)]
    assert shapes == [(72, 72), (36, 36), (18, 18), (9, 9)]


def test_resample_time_keeps_the_band_and_filters_aliases():
    t = torch.arange(1000) * 1e-3

    def tone(hz):
        return torch.sin(2 * math.pi * hz * t)[None, None, :, None].expand(1, 5, 1000, 70)  # (1, 5, 1000, 70)

    y = resample_time(tone(10.0), 291)  # dt 1000/291 ms: Nyquist 145.5 Hz
    t2 = (torch.arange(291) + 0.5) * (1000 / 291) * 1e-3 - 0.5e-3  # output sample centres (half-pixel)
    mid = slice(20, -20)  # away from the ends, where the filter is cut short
    torch.testing.assert_close(y[0, 0, mid, 0], torch.sin(2 * math.pi * 10.0 * t2)[mid], atol=0.02, rtol=0)
    assert torch.equal(y[..., 0], y[..., 69])  # receivers untouched
    alias = resample_time(tone(400.0), 291)  # above the new Nyquist: must not fold down to 109 Hz
    assert alias[0, 0, mid].abs().max() < 0.1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert resample_time(tone(10.0).bfloat16(), 291).dtype == torch.float32


def test_decoder_coordinates():
    c = coordinates(torch.zeros(2, 7, 9, 4, dtype=torch.bfloat16))
    assert c.shape == (2, 2, 9, 4) and c.dtype == torch.bfloat16
    assert torch.equal(c[0, 0, :, 0], torch.linspace(-1, 1, 9, dtype=torch.bfloat16))  # depth down the rows
    assert torch.equal(c[1, 1, 0], torch.linspace(-1, 1, 4, dtype=torch.bfloat16))  # x along the columns
    assert (c[:, 0] == c[:, 0, :, :1]).all() and (c[:, 1] == c[:, 1, :1]).all()


def test_bad_unet_arguments():
    with pytest.raises(ValueError, match="expected strictly increasing dims"):
        create_model("convnext_unet", "tiny", dims=[16, 32, 64, 64])
    with pytest.raises(ValueError, match="divisible by 32"):
        create_model("caformer_unet", "tiny", dims=[16, 32, 48, 96])
    with pytest.raises(ValueError, match="expected a timm convnext_"):
        create_model("convnext_unet", "tiny", backbone="caformer_s18")
    with pytest.raises(ValueError, match="expected encoder_args without"):
        create_model("convnext_unet", "tiny", encoder_args={"in_chans": 3})


def test_encoder_args_reach_timm():
    gammas = [p for n, p in create_model("convnext_unet", "tiny").named_parameters() if n.endswith(".gamma")]
    assert gammas and all(torch.all(g == 1.0) for g in gammas)  # the tiny preset's ls_init_value
    model = create_model("convnext_unet", "tiny", encoder_args={"ls_init_value": 1e-6})
    assert all(torch.all(p == 1e-6) for n, p in model.named_parameters() if n.endswith(".gamma"))


# --------------------------------------------------------------------------------------------- ViT


def test_tiling_puts_shot_k_at_its_columns():
    x = torch.arange(2 * 5 * 7 * 70, dtype=torch.float32).reshape(2, 5, 7, 70)  # (B, 5, T, 70)
    img = tile_shots(x)
    assert img.shape == (2, 1, 7, 350)
    for k in range(5):
        assert torch.equal(img[:, 0, :, 70 * k:70 * k + 70], x[:, k])


def test_vit_image_and_token_grid():
    model = create_model("vit_fwi", "tiny").eval()
    x = seismic(1)
    img = model.image(x)
    assert img.shape == (1, 1, 350, 350)
    torch.testing.assert_close(img[0, 0, :, 140:210], resample_time(x, 350)[0, 2])  # shot 2, time resampled
    assert model.grid == 35 and model.vit.num_prefix_tokens == 4  # registers only, no class token
    from timm.layers import build_sincos2d_pos_embed

    assert isinstance(model.vit.patch_embed.norm, torch.nn.LayerNorm)
    assert torch.equal(model.vit.pos_embed[0], build_sincos2d_pos_embed([35, 35], model.vit.embed_dim))
    with torch.no_grad():
        tokens = model.vit.forward_features(img)
    assert tokens.shape == (1, 4 + 35 * 35, model.vit.embed_dim)


def test_vit_rejects_a_patch_that_does_not_make_the_grid():
    with pytest.raises(ValueError, match="expected a patch_size"):
        create_model("vit_fwi", "tiny", patch_size=14)  # 25 x 25 tokens: no integer pixel shuffle to 70

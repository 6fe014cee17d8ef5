"""Applying trained models to seismic data: the normalisation training used, the device and precision
to run in, and one batch through one or several weighted models.

Shared by training (normalisation), ``gwi predict`` and ``gwi ensemble``; it imports neither of
them, so they do not import each other for it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .data.layout import VMAX, VMIN

if TYPE_CHECKING:
    from .runs import LoadedModel


@dataclass
class Normalizer:
    """OpenFWI normalisation; its constants travel in every checkpoint so prediction applies exactly
    what training did."""

    seis_min: float
    seis_max: float
    vel_min: float = 1500.0
    vel_max: float = 4500.0
    vel_mean: float | None = None

    @classmethod
    def from_manifest(cls, m: dict) -> "Normalizer":
        n = m["normalisation"]
        g = n["seismic"]["global"]
        return cls(float(g["min"]), float(g["max"]), float(n["velocity"]["min"]), float(n["velocity"]["max"]),
                   n["velocity"].get("mean"))

    def seismic(self, x: torch.Tensor) -> torch.Tensor:
        """log1p(|x|)·sign(x), scaled to [-1, 1]. A float16 batch (what shards hold) has only 65,536
        possible values, so it is one lookup in a table of them all: two passes instead of a log per
        element (on a CPU training step the formula was 27 ms of a 200 ms tiny step), same numbers."""
        if x.dtype == torch.float16:
            table = _seismic_table(self.seis_min, self.seis_max, str(x.device))
            return table.index_select(0, x.reshape(-1).view(torch.uint16).to(torch.int32)).view(x.shape)
        return _seismic_formula(x.float(), self.seis_min, self.seis_max)

    def velocity(self, v: torch.Tensor) -> torch.Tensor:
        return (v.float() - self.vel_min) / (self.vel_max - self.vel_min) * 2 - 1

    def denorm_velocity(self, v: torch.Tensor) -> torch.Tensor:
        return (v.float() + 1) / 2 * (self.vel_max - self.vel_min) + self.vel_min


def _seismic_formula(x: torch.Tensor, seis_min: float, seis_max: float) -> torch.Tensor:
    """Normalise float32 ``x`` in place after its first pass: two passes allocate, two do not (the
    plain formula takes seven)."""
    scale = 2 / (seis_max - seis_min)
    return torch.log1p(x.abs()).copysign_(x).mul_(scale).add_(-1 - seis_min * scale)


@functools.lru_cache(maxsize=16)
def _seismic_table(seis_min: float, seis_max: float, device: str) -> torch.Tensor:
    """The normalised float32 of every float16 bit pattern, indexed by the pattern (256 KiB)."""
    every = torch.arange(1 << 16, dtype=torch.int32).to(torch.uint16).view(torch.float16).float()
    return _seismic_formula(every, seis_min, seis_max).to(device)


def resolve_device_precision(device: str | None, precision: str | None) -> tuple[torch.device, str]:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if precision in (None, "auto"):
        precision = "fp16" if dev.type == "cuda" else "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision: expected one of fp32, bf16, fp16, got {precision!r}")
    if dev.type == "cpu" and precision == "fp16":
        raise ValueError("precision: fp16 inference needs CUDA; on CPU use bf16 or fp32")
    return dev, precision


def flip_seismic(x: torch.Tensor) -> torch.Tensor:
    """(B, 5, T, 70) → the recording of the mirrored velocity map: receivers reversed and the order of
    the five sources reversed. Nearly exact: sources at x = 0, 17, 34, 52, 69 mirror to 69, 52, 35, 17, 0,
    so only the middle shot lands one cell (10 m) off. Training's flip augmentation and predict's flip
    TTA both use it, so they cannot disagree."""
    return x.flip(-1).flip(1)


def flip_velocity(v: torch.Tensor) -> torch.Tensor:
    """(..., 70, 70) velocity mirrored left-right: the map :func:`flip_seismic`'s recording belongs to."""
    return v.flip(-1)


@torch.no_grad()
def predict_batch(models: list[LoadedModel], weights: list[float], x: np.ndarray, device, precision: str,
                  tta: bool = False) -> np.ndarray:
    """(B,5,1000,70) raw seismic → (B,70,70) float32 m/s, clipped to 1500–4500."""
    xt = torch.from_numpy(x).to(device)
    acc = None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    for m, w in zip(models, weights):
        xn = m.norm.seismic(xt)  # each checkpoint's own normalisation constants
        views = [xn, flip_seismic(xn)] if tta else [xn]
        outs = []
        for k, v in enumerate(views):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                p = m.model(v)
            p = m.norm.denorm_velocity(p.float())  # (B, 1, 70, 70) float32 m/s
            outs.append(flip_velocity(p) if k == 1 else p)
        p = torch.stack(outs).mean(0)
        acc = p * w if acc is None else acc + p * w
    return acc[:, 0].clamp(VMIN, VMAX).cpu().numpy().astype(np.float32)

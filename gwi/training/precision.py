"""The precision a run trains in, and its one autocast context (a GradScaler is enabled only for fp16)."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from ..config import TrainConfig


def resolve_precision(cfg: TrainConfig, device: torch.device, card) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    if device.type == "cuda":
        want = card.precision if card.precision in ("bf16", "fp16", "fp32") else "bf16"
        if want == "bf16" and not torch.cuda.is_bf16_supported():
            return "fp16"
        return want
    return "fp32"


def amp_context(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)

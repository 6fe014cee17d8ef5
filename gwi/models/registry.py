"""The model registry: a name maps to a constructor and a card (what it is, its presets, its cost).

``gwi models`` and ``gwi train --model`` read this one table. A model module registers itself with
``@register_model(...)`` on a constructor taking keyword arguments only; presets are named sets of
those arguments (``default`` is the full-size model, ``tiny`` trains on a 2-core CPU in seconds per
step). Every model maps normalised seismic ``(B, 5, 1000, 70)`` to normalised velocity
``(B, 1, 70, 70)`` in [-1, 1].
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

INPUT_SHAPE = (5, 1000, 70)
OUTPUT_SHAPE = (1, 70, 70)

# modules that register models; imported on first use so `import gwi` stays light
MODEL_MODULES = (
    "gwi.models.inversionnet",
    "gwi.models.specproj_unet",
    "gwi.models.heat_kernel",
    "gwi.models.egnn",
    "gwi.models.se3_transformer",
)


@dataclass(frozen=True)
class ModelCard:
    name: str
    summary: str
    reference: str
    equivariance: str
    presets: dict[str, dict]
    precision: str = "bf16"  # recommended autocast precision on GPU
    input_shape: tuple = INPUT_SHAPE
    output_shape: tuple = OUTPUT_SHAPE
    requires: tuple[str, ...] = ()  # optional packages beyond torch
    mc_dropout: bool = False  # has dropout layers usable for Monte-Carlo uncertainty
    tags: tuple[str, ...] = field(default_factory=tuple)


_REGISTRY: dict[str, tuple[Callable, ModelCard]] = {}
_FAILED: dict[str, str] = {}  # module -> import error, e.g. an optional dependency not installed
_loaded = False


def register_model(name: str, *, summary: str, reference: str, equivariance: str, presets: dict[str, dict],
                   precision: str = "bf16", requires: tuple[str, ...] = (), mc_dropout: bool = False):
    if "default" not in presets or "tiny" not in presets:
        raise ValueError(f"model {name!r}: presets must include 'default' and 'tiny', got {sorted(presets)}")

    def deco(fn: Callable):
        if name in _REGISTRY and _REGISTRY[name][0] is not fn:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = (fn, ModelCard(name, summary, reference, equivariance, presets, precision,
                                         requires=requires, mc_dropout=mc_dropout))
        return fn

    return deco


def _load_all() -> None:
    global _loaded
    if not _loaded:
        for m in MODEL_MODULES:
            try:
                importlib.import_module(m)
            except ImportError as e:
                _FAILED[m] = f"{type(e).__name__}: {e}"
        _loaded = True


def list_models() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def model_card(name: str) -> ModelCard:
    _load_all()
    if name not in _REGISTRY:
        msg = f"unknown model {name!r}: expected one of {', '.join(sorted(_REGISTRY))}"
        if _FAILED:
            msg += "; not loaded: " + "; ".join(f"{m} ({e})" for m, e in _FAILED.items())
        raise ValueError(msg)
    return _REGISTRY[name][1]


def model_args(name: str, preset: str = "default", overrides: dict | None = None) -> dict:
    """The constructor's keyword arguments for a preset plus overrides (what a checkpoint records)."""
    card = model_card(name)
    if preset not in card.presets:
        raise ValueError(f"model {name!r}: unknown preset {preset!r}, expected one of {', '.join(card.presets)}")
    return {**card.presets[preset], **(overrides or {})}


def create_model(name: str, preset: str = "default", **overrides):
    """Build ``name`` with ``preset``'s arguments, overridden by keyword arguments."""
    args = model_args(name, preset, overrides)
    fn = _REGISTRY[name][0]
    try:
        return fn(**args)
    except TypeError as e:
        raise ValueError(f"model {name!r}: bad arguments {sorted(overrides)}: {e}") from None


def build_from_args(name: str, args: dict):
    """Rebuild a model from the exact arguments a checkpoint recorded."""
    model_card(name)
    return _REGISTRY[name][0](**args)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())

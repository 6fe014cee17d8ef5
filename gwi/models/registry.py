"""The model registry: a name maps to a constructor and a card (what it is, its presets, its cost).

``gwi models`` and ``gwi train --model`` read this one table. A model module registers itself with
``@register_model(...)`` on a constructor taking keyword arguments only; presets are named sets of
those arguments (``default`` is the full-size model, ``tiny`` trains on a 2-core CPU in seconds per
step). Every model maps normalised seismic ``(B, 5, 1000, 70)`` to normalised velocity
``(B, 1, 70, 70)`` in [-1, 1].
"""

from __future__ import annotations

import ast
import functools
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

INPUT_SHAPE = (5, 1000, 70)
OUTPUT_SHAPE = (1, 70, 70)

# modules that register models; read for their cards, imported only to build a model
MODEL_MODULES = (
    "gwi.models.inversionnet",
    "gwi.models.specproj_unet",
    "gwi.models.heat_kernel",
    "gwi.models.egnn",
    "gwi.models.se3_transformer",
    "gwi.models.timm_unet",
    "gwi.models.vit_fwi",
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


def _card(name: str, summary: str, reference: str, equivariance: str, presets: dict[str, dict],
          precision: str = "bf16", requires: tuple[str, ...] = (), mc_dropout: bool = False) -> ModelCard:
    if "default" not in presets or "tiny" not in presets:
        raise ValueError(f"model {name!r}: presets must include 'default' and 'tiny', got {sorted(presets)}")
    return ModelCard(name, summary, reference, equivariance, presets, precision, requires=tuple(requires),
                     mc_dropout=mc_dropout)


def register_model(name: str, **card):
    """Register the decorated constructor under ``name``; ``card`` holds literals only (see _source_cards)."""
    built = _card(name, **card)

    def deco(fn: Callable):
        if name in _REGISTRY and _REGISTRY[name][0] is not fn:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = (fn, built)
        return fn

    return deco


@functools.cache
def _source_cards() -> dict[str, tuple[str, ModelCard]]:
    """name -> (module, card), read from each model module's ``@register_model(...)`` call without
    importing it. Why not import: checking a plan (``gwi dispatch --dry-run``) needs the names and
    presets, and importing the modules costs torch, torch_geometric and e3nn (seconds, and a CUDA
    init) for a command that only reads YAML. A test checks these cards equal the imported ones."""
    out: dict[str, tuple[str, ModelCard]] = {}
    for mod in MODEL_MODULES:
        path = Path(__file__).with_name(mod.rsplit(".", 1)[1] + ".py")
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            for deco in getattr(node, "decorator_list", ()):
                if isinstance(deco, ast.Call) and getattr(deco.func, "id", None) == "register_model":
                    try:
                        name = ast.literal_eval(deco.args[0])
                        card = {k.arg: ast.literal_eval(k.value) for k in deco.keywords}
                    except (ValueError, IndexError):
                        raise ValueError(f"{path}:{deco.lineno}: @register_model takes a literal name and literal "
                                         "card fields (gwi reads them without importing the module)") from None
                    out[name] = (mod, _card(name, **card))
    return out


def list_models() -> list[str]:
    return sorted(_source_cards())


def model_card(name: str) -> ModelCard:
    cards = _source_cards()
    if name not in cards:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(sorted(cards))}")
    return cards[name][1]


def _constructor(name: str) -> Callable:
    """Import the model's module (torch and its optional packages come with it) and return its constructor."""
    card = model_card(name)  # the unknown-model error
    if name not in _REGISTRY:
        try:
            importlib.import_module(_source_cards()[name][0])
        except ImportError as e:
            need = ", ".join(card.requires) or "its dependencies"
            raise ValueError(f"model {name!r} cannot be built here: {type(e).__name__}: {e} (it needs {need})") from None
    return _REGISTRY[name][0]


def model_args(name: str, preset: str = "default", overrides: dict | None = None) -> dict:
    """The constructor's keyword arguments for a preset plus overrides (what a checkpoint records)."""
    card = model_card(name)
    if preset not in card.presets:
        raise ValueError(f"model {name!r}: unknown preset {preset!r}, expected one of {', '.join(card.presets)}")
    return {**card.presets[preset], **(overrides or {})}


def create_model(name: str, preset: str = "default", **overrides):
    """Build ``name`` with ``preset``'s arguments, overridden by keyword arguments."""
    args = model_args(name, preset, overrides)
    fn = _constructor(name)
    try:
        return fn(**args)
    except TypeError as e:
        raise ValueError(f"model {name!r}: bad arguments {sorted(overrides)}: {e}") from None


def build_from_args(name: str, args: dict):
    """Rebuild a model from the exact arguments a checkpoint recorded."""
    return _constructor(name)(**args)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())

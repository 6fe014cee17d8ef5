"""Import timm even where torchvision's compiled half does not load.

Why this exists: an environment with the CPU torch wheel beside PyPI's torchvision wheel (a CUDA
build) fails ``import torchvision`` with "RuntimeError: operator torchvision::nms does not exist",
raised while ``torchvision._meta_registrations`` registers fake kernels for ops whose C extension did
not load. timm imports torchvision at import time (FrozenBatchNorm2d, transforms, datasets), but gwi
never calls torchvision's compiled ops, so on exactly that failure the meta registrations are
replaced by an empty module and torchvision is imported again. A working torchvision is untouched.
"""

from __future__ import annotations

import os
import sys
import types


def _import_torchvision() -> None:
    try:
        import torchvision
    except RuntimeError as e:
        if "torchvision::" not in str(e) or "does not exist" not in str(e):
            raise
        # the failed import left half-initialised torchvision modules behind; a retry must start clean
        for mod in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[mod]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        import torchvision  # noqa: F401
    except ImportError:
        pass  # no torchvision at all: timm imports without it where it can, and says so where it cannot


def import_timm():
    """The timm module, imported offline (gwi never downloads weights) and past a broken torchvision."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _import_torchvision()
    import timm

    return timm

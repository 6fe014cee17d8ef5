"""Where the competition's files are: the Kaggle / OpenFWI folder layouts, and the geometry constants.

Train (``train_samples/<Family>/``), two naming styles, both seen in the competition's copy:
  * ``data/dataN.npy`` with ``model/modelN.npy`` (FlatVel, CurveVel, Style)
  * ``seisN_1_0.npy`` with ``velN_1_0.npy`` in the family folder itself (FlatFault, CurveFault)
Test: ``test/<oid>.npy``, one (5, 1000, 70) sample each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

# OpenFWI geometry (DESIGN.md §2): the synthetic modeller and the checks share these.
NX = NZ = 70
DX = 10.0  # m
NT = 1000
DT = 1e-3  # s
N_SOURCES = 5
N_RECEIVERS = 70
SOURCE_X = (0, 17, 34, 52, 69)  # grid columns; OpenFWI's round(linspace(0, 69, 5))
SOURCE_Z = 1  # grid row: 10 m depth
RECEIVER_Z = 1
FREQ = 15.0  # Hz, Ricker peak
VMIN, VMAX = 1500.0, 4500.0  # m/s

SEISMIC_SHAPE = (N_SOURCES, NT, N_RECEIVERS)
VELOCITY_SHAPE = (1, NZ, NX)

FAMILIES = (
    "FlatVel_A", "FlatVel_B", "CurveVel_A", "CurveVel_B",
    "FlatFault_A", "FlatFault_B", "CurveFault_A", "CurveFault_B",
    "Style_A", "Style_B",
)


@dataclass(frozen=True)
class SourcePair:
    """One seismic file and the velocity file that labels it."""

    family: str
    x_path: Path
    y_path: Path


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


_DATA_RE = re.compile(r"^data(\d+)\.npy$")
_SEIS_RE = re.compile(r"^seis(.+)\.npy$")


def _family_pairs(fam_dir: Path) -> list[SourcePair]:
    family = fam_dir.name
    pairs: list[SourcePair] = []
    claimed: set[Path] = set()

    data_dir, model_dir = fam_dir / "data", fam_dir / "model"
    if data_dir.is_dir():
        for x in sorted(data_dir.glob("*.npy"), key=_natural_key):
            m = _DATA_RE.match(x.name)
            if not m:
                continue
            y = model_dir / f"model{m.group(1)}.npy"
            if not y.is_file():
                raise DataError(f"{x}: no velocity file for it, expected {y}")
            pairs.append(SourcePair(family, x, y))
            claimed.add(y)
    if model_dir.is_dir():
        for y in sorted(model_dir.glob("model*.npy"), key=_natural_key):
            if y not in claimed:
                raise DataError(f"{y}: velocity file with no seismic file (expected {data_dir / y.name.replace('model', 'data', 1)})")

    for x in sorted(fam_dir.glob("seis*.npy"), key=_natural_key):
        m = _SEIS_RE.match(x.name)
        y = fam_dir / f"vel{m.group(1)}.npy"
        if not y.is_file():
            raise DataError(f"{x}: no velocity file for it, expected {y}")
        pairs.append(SourcePair(family, x, y))
        claimed.add(y)
    for y in sorted(fam_dir.glob("vel*.npy"), key=_natural_key):
        if y not in claimed:
            raise DataError(f"{y}: velocity file with no seismic file (expected {fam_dir / ('seis' + y.name[3:])})")
    return pairs


def discover_train(src: str | Path) -> list[SourcePair]:
    """Every (seismic, velocity) file pair under a Kaggle/OpenFWI train folder, families sorted.

    ``src`` may be the competition root (holding ``train_samples/``), ``train_samples`` itself, or a
    single family folder.
    """
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"{src}: no such folder")
    root = src / "train_samples" if (src / "train_samples").is_dir() else src
    # a single family folder: it holds the files itself
    if (root / "data").is_dir() or any(root.glob("seis*.npy")):
        fam_dirs = [root]
    else:
        fam_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    pairs: list[SourcePair] = []
    for d in fam_dirs:
        found = _family_pairs(d)
        if not found and (any(d.rglob("*.npy"))):
            raise DataError(
                f"{d}: .npy files found but none in a known layout; expected data/dataN.npy with "
                "model/modelN.npy, or seisN_*.npy with velN_*.npy"
            )
        pairs.extend(found)
    if not pairs:
        raise DataError(
            f"{src}: no training data found; expected train_samples/<Family>/data/dataN.npy + "
            "model/modelN.npy or <Family>/seisN_1_0.npy + velN_1_0.npy"
        )
    return pairs


def discover_test(test_dir: str | Path) -> list[tuple[str, Path]]:
    """``(oid, path)`` for every ``<oid>.npy`` in a test folder, sorted by oid (the order kept everywhere)."""
    d = Path(test_dir)
    if not d.is_dir():
        raise DataError(f"{d}: no such folder")
    if (d / "test").is_dir() and not any(d.glob("*.npy")):
        d = d / "test"
    files = sorted(d.glob("*.npy"), key=lambda p: p.stem)
    if not files:
        raise DataError(f"{d}: no <oid>.npy test files found")
    return [(p.stem, p) for p in files]

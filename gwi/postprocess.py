"""Post-processing of predicted maps, the winners' last step: behind a flag, scored by ``gwi evaluate``.

``--post plateau[:TOL]`` (predict and evaluate): a map :func:`gwi.physics.priors.classify` calls
layered (the maps of OpenFWI's Vel and Fault families are piecewise constant) is snapped to its
plateaus: in each column, the cells between two steps larger than ``TOL`` m/s (default
:data:`PLATEAU_TOL`) take the median of their run. A network's layer is not quite flat (ripples of
a few m/s to tens), and the median of a run is nearer the layer's one value than most of its cells;
the cells of a blurred interface, where every step is large, are runs of one and stay as they are.
Smooth maps (Style's random fields) are left alone: snapping would carve steps into them.
``gwi evaluate --post`` reports the MAE with and without, on the validation split, so the flag is
kept only where it pays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PLATEAU_TOL = 20.0  # m/s per cell: a step larger than this starts a new run
POSTS = ("plateau",)


@dataclass(frozen=True)
class Post:
    name: str
    tol: float = PLATEAU_TOL

    def __str__(self) -> str:
        return f"{self.name}:{self.tol:g}"


def parse(text: str | None) -> tuple[Post, ...]:
    """``plateau`` or ``plateau:TOL`` (comma-separated steps, applied in order); None/"": none."""
    out = []
    for item in filter(None, (t.strip() for t in (text or "").split(","))):
        name, _, arg = item.partition(":")
        if name not in POSTS:
            raise ValueError(f"--post: unknown step {name!r}; expected one of: {', '.join(POSTS)} (e.g. plateau:20)")
        try:
            tol = float(arg) if arg else PLATEAU_TOL
        except ValueError:
            raise ValueError(f"--post: {name}: expected a tolerance in m/s per cell, got {arg!r}") from None
        if not tol > 0:
            raise ValueError(f"--post: {name}: expected a tolerance > 0 m/s, got {arg}")
        out.append(Post(name, tol))
    return tuple(out)


def apply(v: np.ndarray, posts: tuple[Post, ...]) -> np.ndarray:
    """(B, 70, 70) m/s -> the same, each step applied to every map it concerns."""
    for p in posts:
        v = np.stack([plateau(m, p.tol) for m in v]) if len(v) else v
    return v


def plateau(v: np.ndarray, tol: float = PLATEAU_TOL) -> np.ndarray:
    """A (nz, nx) map in m/s snapped to its plateaus (see the module's docstring); a smooth one as it is."""
    from scipy import ndimage

    from .physics.priors import classify

    if classify(v) != "layered":
        return v
    step = np.abs(np.diff(v, axis=0)) > tol  # (nz-1, nx): where a new run starts, column by column
    runs = np.vstack([np.zeros((1, v.shape[1]), np.int64), np.cumsum(step, axis=0)])  # (nz, nx)
    labels = runs + np.arange(v.shape[1]) * v.shape[0]  # a run id unique over the map
    ids = np.unique(labels)
    med = np.asarray(ndimage.median(v, labels, ids), dtype=v.dtype)
    return med[np.searchsorted(ids, labels)]

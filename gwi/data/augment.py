"""``gwi data augment``: new velocity maps made from a dataset's maps, re-simulated into a new dataset.

The 1st place of the competition trained on millions of re-simulated pairs; a team with one
dataset gets more pairs by transforming its maps and modelling them again (the seismic of a warped
map is not the warped seismic, so the forward model runs on every new map). Each new map ``k`` of
source sample ``i`` is drawn from its own generator seeded by ``(seed, i, k)``: the same command
makes the same bytes, on one machine or spread over ``--shard i/N`` attempts.

Operations (the recipe), each drawn with its probability, at least one per map:

* ``flip`` (p ½): mirror left-right. The acquisition is symmetric, so this is a new, equally
  plausible subsurface.
* ``crop`` (p ½): a window of 70–100 % of the width and of the depth, resized back to 70×70:
  the same structures, larger, elsewhere.
* ``affine`` (p ½): a rotation within ±6°, a shear within ±0.1 and a vertical stretch within ±10 %
  about the centre (the ``Flat`` families only the stretch: their layers stay flat); the edges are
  extended outward.
* ``blend`` (p ⅓): a mix, weight 0.3–0.7, with another map of the same family.

Layered families are resampled nearest-neighbour, so interfaces stay sharp as their generators make
them; the smooth ``Style`` families bilinearly. Every map is clipped to 1500–4500 m/s.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import DataError
from ..physics import AUGMENT_OPS as OPS
from ..progress import update as report_progress
from ..sharding import shard_of
from .layout import VMAX, VMIN

AUGMENT_VERSION = 1
_P = {"flip": 0.5, "crop": 0.5, "affine": 0.5, "blend": 1 / 3}


def parse_recipe(text: str | list[str] | None) -> tuple[str, ...]:
    """``"flip,crop"`` → ("flip", "crop"); ``None``: all of them."""
    if text is None:
        return OPS
    ops = [o.strip() for o in (text.split(",") if isinstance(text, str) else text) if o.strip()]
    bad = [o for o in ops if o not in OPS]
    if bad or not ops:
        raise ValueError(f"recipe: expected a comma-separated subset of {','.join(OPS)}, got {text!r}")
    if len(set(ops)) != len(ops):
        raise ValueError(f"recipe: {text!r} names an operation twice")
    return tuple(o for o in OPS if o in ops)


def draw(rng: np.random.Generator, ops: tuple[str, ...], flat: bool = False) -> tuple[np.ndarray, float | None, list[str]]:
    """One map's transform: the (2, 3) affine ``theta`` of ``F.affine_grid`` (output → input in [-1, 1]
    coordinates, x across, y down), the blend weight of the map itself (None: no blend), the ops."""
    chosen = [o for o in ops if rng.random() < _P[o]]
    if not chosen:
        chosen = [ops[int(rng.integers(len(ops)))]]
    m, t = np.eye(2), np.zeros(2)
    if "affine" in chosen:
        a, sh, st = math.radians(rng.uniform(-6, 6)), rng.uniform(-0.1, 0.1), rng.uniform(0.9, 1.1)
        if flat:
            a = sh = 0.0
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        m = rot @ np.array([[1.0, sh], [0.0, st]])
    if "crop" in chosen:
        s = rng.uniform(0.7, 1.0, size=2)  # of the width, of the depth
        off = rng.uniform(-(1 - s), 1 - s)
        m, t = np.diag(s) @ m, np.diag(s) @ t + off
    if "flip" in chosen:
        m, t = np.diag([-1.0, 1.0]) @ m, np.diag([-1.0, 1.0]) @ t
    weight = float(rng.uniform(0.3, 0.7)) if "blend" in chosen else None
    return np.concatenate([m, t[:, None]], axis=1), weight, chosen


def transform(v: np.ndarray, theta: np.ndarray, smooth: np.ndarray) -> np.ndarray:
    """Maps ``v`` (B, 70, 70) resampled through ``theta`` (B, 2, 3); ``smooth`` (B,) bool picks
    bilinear over nearest. Outside the map the border is extended."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))[:, None]  # (B, 1, 70, 70)
    th = torch.from_numpy(theta.astype(np.float32))
    grid = F.affine_grid(th, list(x.shape), align_corners=False)
    out = torch.empty_like(x)
    for mode, sel in (("bilinear", smooth), ("nearest", ~smooth)):
        idx = torch.from_numpy(np.flatnonzero(sel))
        if len(idx):
            out[idx] = F.grid_sample(x[idx], grid[idx], mode=mode, padding_mode="border", align_corners=False)
    return out[:, 0].numpy()


def new_maps(src, indices: list[int], k: int, seed: int, ops: tuple[str, ...],
             by_family: dict[str, np.ndarray]) -> tuple[np.ndarray, list[list[str]]]:
    """The ``k``-th new map of each source sample in ``indices`` (of one family): (B, 70, 70) m/s."""
    v = np.stack([np.asarray(src[i][1][0], np.float32) for i in indices])
    thetas, blends, partners, applied = [], [], [], []
    for i in indices:
        rng = np.random.default_rng([seed, i, k])
        theta, weight, chosen = draw(rng, ops, flat=str(src.families[i]).startswith("Flat"))
        same = by_family[str(src.families[i])]
        # another map of the family (itself only when the family has one map)
        j = int(same[rng.integers(len(same))]) if len(same) < 2 else int(rng.choice(same[same != i]))
        thetas.append(theta)
        blends.append(weight)
        partners.append(j)
        applied.append(chosen)
    smooth = np.array([str(src.families[i]).startswith("Style") for i in indices])
    out = transform(v, np.stack(thetas), smooth)
    for b, (w, j) in enumerate(zip(blends, partners)):
        if w is not None:
            out[b] = w * out[b] + (1 - w) * np.asarray(src[j][1][0], np.float32)
    return np.clip(out, VMIN, VMAX), applied


def augment(source: str, out: str, name: str, *, factor: int = 10, recipe: tuple[str, ...] = OPS, seed: int = 0,
            backend: str | None = None, keep_source: bool = False, shard: tuple[int, int] | None = None,
            batch_size: int = 16, device: str | None = None, shard_size: int = 500, overwrite: bool = False,
            exist_ok: bool = False, progress: bool | None = None) -> dict:
    """``factor`` new maps per sample of the labelled dataset ``source`` (a URL), forward-modelled with
    ``backend`` (default: the one that made ``source``), written as dataset ``name`` in store ``out``;
    with ``keep_source`` the source samples too, as they are. With ``shard`` (i, N) only every N-th
    source sample from the i-th, written as part i of N (``gwi data merge`` joins the parts)."""
    from ..console import progress as console_progress

    from .. import physics
    from .shards import DatasetWriter, ShardedDataset, existing_dataset
    from .sync import pull

    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor: expected a positive integer (new maps per source map), got {factor!r}")
    root = pull(source, progress=False)
    src = ShardedDataset(root)
    if not src.manifest.get("labelled", True):
        raise DataError(f"{source}: an unlabelled dataset (test data) has no velocity maps to augment")
    made_by = src.manifest.get("source", {}).get("backend")
    backend = backend or (made_by if made_by in physics.BACKENDS else physics.DEFAULT_BACKEND)
    if backend not in physics.BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(physics.BACKENDS)}, got {backend!r}")
    settings = {"kind": "augment", "from": source, "from_build": src.manifest.get("build"),
                "from_samples": len(src), "factor": factor, "recipe": list(recipe), "seed": seed,
                "keep_source": keep_source, "augment_version": AUGMENT_VERSION, "backend": backend}
    part = f"{shard[0]}-of-{shard[1]}" if shard else None
    if exist_ok and not overwrite:
        done = existing_dataset(out, name, settings, part)
        if done is not None:
            return done
    import torch

    fm = physics.backend(backend, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    mine = shard_of(list(range(len(src))), shard)
    by_family = {f: np.flatnonzero(src.families == f) for f in sorted(set(src.families))}
    total = len(mine) * (factor + keep_source)
    with DatasetWriter(out, name, source={**settings, "shard": list(shard) if shard else None, **fm.describe()},
                       labelled=True, shard_size=shard_size, overwrite=overwrite, part=part) as w, \
            console_progress(total, f"augment {name}", enabled=progress) as bar:
        for fam, members in by_family.items():
            todo = [i for i in mine if src.families[i] == fam]
            if keep_source and todo:
                x, y = src.batch(todo)
                w.add(fam, x, y, src=f"{source}#{fam}")
                bar.update(len(todo))
            for k in range(factor):
                for start in range(0, len(todo), batch_size):
                    chunk = todo[start:start + batch_size]
                    v, _ = new_maps(src, chunk, k, seed, recipe, by_family)
                    with torch.no_grad():
                        x = fm(torch.from_numpy(v)).float().cpu().numpy()  # (B, 5, 1000, 70)
                    w.add(fam, x, v[:, None], src=f"augment:{fam}:k={k}:from={chunk[0]}")
                    bar.update(len(chunk))
                    report_progress(state="running", done=bar.n, total=total, unit="samples")
        return w.finish()

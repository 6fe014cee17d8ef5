"""Validation splits computed from a manifest alone, so every platform agrees on them.

* ``kfold(manifest, k, fold)``: family-stratified K-fold. Each family's samples are shuffled by a
  generator seeded from ``(seed, family)`` and cut into ``k`` near-equal parts; fold ``i`` validates on
  part ``i`` of every family. Each family is spread evenly over the folds.
* ``leave_family_out(manifest, family)``: validate on one whole family, train on the rest.

Indices are global sample indices in manifest order (the order :class:`ShardedDataset` uses).
"""

from __future__ import annotations

import zlib

import numpy as np

from .shards import x_shards


def sample_families(manifest: dict) -> np.ndarray:
    """Family of every sample, in manifest order."""
    out = []
    for s in x_shards(manifest):
        out.extend([s["family"]] * int(s["shape"][0]))
    return np.array(out)


def _family_index(manifest: dict) -> dict[str, np.ndarray]:
    fams = sample_families(manifest)
    return {f: np.flatnonzero(fams == f) for f in sorted(set(fams.tolist()))}


def kfold(manifest: dict, k: int, fold: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, val_idx)``, sorted, for fold ``fold`` of ``k``."""
    if not isinstance(k, int) or k < 2:
        raise ValueError(f"k: expected an integer >= 2, got {k!r}")
    if not isinstance(fold, int) or not 0 <= fold < k:
        raise ValueError(f"fold: expected an integer in 0..{k - 1}, got {fold!r}")
    train, val = [], []
    for fam, idx in _family_index(manifest).items():
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(fam.encode())]))
        parts = np.array_split(rng.permutation(idx), k)
        for i, p in enumerate(parts):
            (val if i == fold else train).append(p)
    return np.sort(np.concatenate(train)).astype(np.int64), np.sort(np.concatenate(val)).astype(np.int64)


def leave_family_out(manifest: dict, family: str) -> tuple[np.ndarray, np.ndarray]:
    groups = _family_index(manifest)
    if family not in groups:
        raise ValueError(f"family: expected one of {', '.join(groups)}, got {family!r}")
    val = groups[family]
    train = np.sort(np.concatenate([v for f, v in groups.items() if f != family] or [np.array([], np.int64)]))
    return train.astype(np.int64), val.astype(np.int64)


def split(manifest: dict, spec: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Parse ``kfold:K:I`` or ``family:NAME`` (the form job specs and ``--split`` use)."""
    kind, _, rest = spec.partition(":")
    if kind == "kfold":
        try:
            k, i = (int(t) for t in rest.split(":"))
        except ValueError:
            raise ValueError(f"split: expected 'kfold:K:FOLD' like 'kfold:5:0', got {spec!r}") from None
        return kfold(manifest, k, i, seed)
    if kind == "family" and rest:
        return leave_family_out(manifest, rest)
    raise ValueError(f"split: expected 'kfold:K:FOLD' or 'family:NAME', got {spec!r}")

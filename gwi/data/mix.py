"""Several datasets read as one, each with a weight: the Kaggle train set beside synthetic, augmented and
pseudo-labelled sets (``gwi train --dataset A --dataset B:0.3``, ``datasets:`` in a plan).

A weight says how many of a dataset's training samples an epoch draws, as a multiple of their number:
``B:0.3`` draws 30% of B's samples (a different 30% each epoch), ``B:2`` each of them twice, ``A`` (no
weight) each once. Each dataset keeps its own manifest, shards and cache; :class:`MixedDataset` only
numbers their samples one after the other, and :func:`interleave` spreads each dataset's share of an
epoch over the epoch while keeping that share's own order (so a streamed dataset still reads its
shards a window at a time). MosaicML streaming calls the same notion ``repeat``.
"""

from __future__ import annotations

import math

import numpy as np

from ..yamlfile import quote


def parse_part(text: str) -> tuple[str, float]:
    """``URL`` or ``URL:WEIGHT`` -> (url, weight); the weight is a positive number (default 1)."""
    text = str(text).strip()
    head, sep, tail = text.rpartition(":")
    weight = 1.0
    if sep and head and "/" not in tail:  # s3://b/x has a ':' too, but never a number after its last one
        try:
            weight = float(tail)
        except ValueError:
            raise ValueError(f"dataset {quote(text)}: expected URL or URL:WEIGHT with a number as WEIGHT, "
                             f"got {quote(tail)}") from None
        text = head
    if not text:
        raise ValueError("dataset: expected a URL, got an empty value")
    if not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"dataset {quote(text)}: expected a weight above 0 (samples drawn per epoch, as a multiple "
                         f"of its own), got {quote(weight)}")
    return text, weight


def spell_part(url: str, weight: float) -> str:
    """The ``URL[:WEIGHT]`` that :func:`parse_part` reads back."""
    return url if weight == 1 else f"{url}:{weight:g}"


def draws(weight: float, base: int) -> int:
    """How many samples an epoch draws from a dataset whose own epoch has ``base`` of them."""
    return math.floor(weight * base + 1e-9)


def repeat_order(order_of, weight: float, base: int, epoch: int) -> np.ndarray:
    """A dataset's share of an epoch: the first ``draws(weight, base)`` samples of its own orders of
    ``ceil(weight)`` consecutive virtual epochs (``order_of(e)``: its order for virtual epoch ``e``).
    A weight of 1 is its order of ``epoch`` itself."""
    k = max(1, math.ceil(weight - 1e-9))
    n = draws(weight, base)
    parts = [order_of(epoch * k + j) for j in range(k)] if k > 1 else [order_of(epoch)]
    return np.concatenate(parts)[:n] if parts else np.empty(0, np.int64)


def interleave(shares: list[np.ndarray], seed: int, epoch: int, rank: int) -> np.ndarray:
    """One epoch's samples from each dataset's share, spread over the epoch at random positions (a pure
    function of seed, epoch, rank) with each share's own order kept."""
    if len(shares) == 1:
        return shares[0]
    labels = np.repeat(np.arange(len(shares)), [len(s) for s in shares])
    labels = np.random.default_rng(np.random.SeedSequence([seed, epoch, rank, 0x313])).permutation(labels)
    out = np.empty(len(labels), np.int64)
    for i, share in enumerate(shares):
        out[labels == i] = share
    return out


class MixedDataset:
    """Datasets numbered one after the other: sample ``offsets[i] + j`` is sample ``j`` of part ``i``.
    The reading side of :class:`~gwi.data.shards.ShardedDataset` (``len``, ``families``, ``batch``),
    ``manifest`` being the first part's; ``plan`` is passed to the parts that stream."""

    def __init__(self, parts: list):
        self.parts = parts
        self.manifest = parts[0].manifest
        self.offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
        self.families = np.concatenate([np.asarray(p.families) for p in parts]).astype(str)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def part_of(self, idx) -> np.ndarray:
        return np.searchsorted(self.offsets, np.asarray(idx), side="right") - 1

    def batch(self, idx, dtype=np.float32, flip=None):
        idx = np.asarray(idx, dtype=np.int64)
        flip = np.zeros(len(idx), bool) if flip is None else np.asarray(flip, bool)
        owner = self.part_of(idx)
        xs = ys = None
        for i in dict.fromkeys(owner.tolist()):
            at = np.flatnonzero(owner == i)
            x, y = self.parts[i].batch(idx[at] - self.offsets[i], dtype=dtype, flip=flip[at])
            if xs is None:
                xs = np.empty((len(idx), *x.shape[1:]), x.dtype)
                ys = np.empty((len(idx), *y.shape[1:]), y.dtype)
            xs[at], ys[at] = x, y
        return xs, ys

    def plan(self, idx, ahead: int) -> None:
        """The samples the coming batches read, in order: each streamed part prefetches its own."""
        idx = np.asarray(idx, dtype=np.int64)
        owner = self.part_of(idx)
        for i, p in enumerate(self.parts):
            if hasattr(p, "plan"):
                p.plan(idx[owner == i] - self.offsets[i], ahead)

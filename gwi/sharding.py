"""Work split over attempts: ``--shard i/N`` of refine, predict and augment picks an interleaved share.

The shares are joined again by ``gwi merge`` (submissions) and ``gwi data merge`` (dataset parts).
"""

from __future__ import annotations


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"2/4"`` → (2, 4): the 2nd of 4 shards (1-based)."""
    if text is None:
        return None
    try:
        i, n = (int(p) for p in str(text).split("/"))
    except ValueError:
        raise ValueError(f"shard: expected i/N with 1 <= i <= N (e.g. 2/4), got {text!r}") from None
    if not (n >= 1 and 1 <= i <= n):
        raise ValueError(f"shard: expected i/N with 1 <= i <= N (e.g. 2/4), got {text!r}")
    return i, n


def shard_of(items: list, shard: tuple[int, int] | None) -> list:
    """Every N-th item from the i-th: shards of near-equal size that interleave (files sorted by oid
    are not sorted by difficulty, so no shard gets all the hard ones)."""
    if shard is None:
        return list(items)
    i, n = shard
    return items[i - 1::n]

import numpy as np
import pytest

from gwi.data import folds


def manifest(counts: dict, shard: int = 3) -> dict:
    """A manifest skeleton: folds need only the x shards' families and sample counts."""
    shards = []
    for fam, n in counts.items():
        for start in range(0, n, shard):
            k = min(shard, n - start)
            shards.append({"path": f"shards/b/{fam}-{start}.x.npy", "family": fam, "kind": "x", "shape": [k, 5, 1000, 70]})
            shards.append({"path": f"shards/b/{fam}-{start}.y.npy", "family": fam, "kind": "y", "shape": [k, 1, 70, 70]})
    return {"shards": shards}


M = manifest({"FlatVel_A": 10, "Style_B": 7, "CurveFault_A": 5})


def test_kfold_partitions_every_family_evenly():
    fams = folds.sample_families(M)
    assert len(fams) == 22 and list(fams[:10]) == ["FlatVel_A"] * 10
    seen = []
    for i in range(5):
        tr, va = folds.kfold(M, 5, i)
        assert np.intersect1d(tr, va).size == 0
        assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(22))
        seen.append(va)
        for fam, n in (("FlatVel_A", 10), ("Style_B", 7), ("CurveFault_A", 5)):
            assert (fams[va] == fam).sum() in (n // 5, -(-n // 5))
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(22))


def test_kfold_is_deterministic_and_seeded():
    a = folds.kfold(M, 3, 1)
    b = folds.kfold(manifest({"FlatVel_A": 10, "Style_B": 7, "CurveFault_A": 5}), 3, 1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = folds.kfold(M, 3, 1, seed=1)
    assert not np.array_equal(a[1], c[1])


def test_leave_family_out():
    tr, va = folds.leave_family_out(M, "Style_B")
    assert np.array_equal(va, np.arange(10, 17))
    assert np.array_equal(tr, np.r_[0:10, 17:22])
    with pytest.raises(ValueError, match="expected one of CurveFault_A, FlatVel_A, Style_B, got 'Nope'"):
        folds.leave_family_out(M, "Nope")


def test_split_strings():
    assert all(np.array_equal(x, y) for x, y in zip(folds.split(M, "kfold:5:2"), folds.kfold(M, 5, 2)))
    assert np.array_equal(folds.split(M, "family:FlatVel_A")[1], np.arange(10))
    for bad in ("kfold:5", "kfold:a:b", "lofo", "family:"):
        with pytest.raises(ValueError, match="split: expected"):
            folds.split(M, bad)
    with pytest.raises(ValueError, match=r"fold: expected an integer in 0\.\.4, got 5"):
        folds.kfold(M, 5, 5)

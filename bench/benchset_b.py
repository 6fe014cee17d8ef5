"""A second benchset whose velocity maps come from a generator of its own, not ``gwi data synth``'s.

    python bench/benchset_b.py --out file:///tmp/bench-b --per-family 16 [--backend openfwi] [--seed 4242]

Why: recipes tuned on maps from one generator did not carry fully to held-out maps from another
(0.50x of the gain there, 0.68x on a third set). Every accuracy, refinement and pseudo-label figure is
reported on both: ``gwi data synth``'s OpenFWI-style families, and these.

The three families here are drawn differently from OpenFWI's on purpose:
- ``B_layers``: 3-8 layers whose interfaces are sums of two random sines (not OpenFWI's flat or single
  curved ones), velocity rising with depth with a random inversion now and then, and in half of them a
  vertical fault offsetting the right part of the map;
- ``B_smooth``: a Gaussian random field (white noise smoothed at a random length of 4-12 cells) over a
  depth trend: no interfaces at all;
- ``B_bodies``: a linear depth gradient with 1-3 elliptical bodies, faster or slower than it.
Each map is a pure function of (family, seed, index); the recordings are simulated with one of gwi's
forward models (openfwi, the organisers' scheme, by default) through ``DatasetWriter``, so the set is
an ordinary gwi dataset (float16 shards, manifest, checksums).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gwi.data.layout import VMAX, VMIN  # noqa: E402

N = 70
FAMILIES = ("B_layers", "B_smooth", "B_bodies")
SEED = 4242  # gwi data synth's sets and the other benches use other seeds


def rng_for(family: str, seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, FAMILIES.index(family), index, 0xB]))


def layers(rng: np.random.Generator) -> np.ndarray:
    k = int(rng.integers(3, 9))
    x = np.arange(N)
    depths = np.sort(rng.uniform(5, N - 5, k - 1))
    z = np.arange(N)[:, None]  # (70, 1)
    v = np.empty((N, N))
    speeds = np.sort(rng.uniform(VMIN + 100, VMAX - 100, k))
    if rng.random() < 0.3:  # an inversion: one layer slower than the one above
        i = int(rng.integers(1, k))
        speeds[i] = max(VMIN + 50, speeds[i - 1] - rng.uniform(100, 600))
    bounds = []
    for d in depths:  # each interface: two sines of random wavelength and phase
        a1, a2 = rng.uniform(0, 6, 2)
        w1, w2 = rng.uniform(20, 140, 2)
        p1, p2 = rng.uniform(0, 2 * np.pi, 2)
        bounds.append(d + a1 * np.sin(2 * np.pi * x / w1 + p1) + a2 * np.sin(2 * np.pi * x / w2 + p2))
    layer = np.sum([z > b[None, :] for b in bounds], axis=0)  # (70, 70) index of the layer at each cell
    v = speeds[layer]
    if rng.random() < 0.5:  # a vertical fault: the right part shifted down
        at, shift = int(rng.integers(15, 55)), int(rng.integers(3, 12))
        right = v[:, at:].copy()
        v[shift:, at:] = right[:-shift]
        v[:shift, at:] = right[:1]
    return v


def smooth(rng: np.random.Generator) -> np.ndarray:
    field = gaussian_filter(rng.standard_normal((N, N)), rng.uniform(4, 12), mode="reflect")
    field = (field - field.mean()) / (field.std() + 1e-9)
    trend = np.linspace(rng.uniform(1700, 2600), rng.uniform(3000, 4300), N)[:, None]
    return trend + field * rng.uniform(150, 450)


def bodies(rng: np.random.Generator) -> np.ndarray:
    zz, xx = np.mgrid[0:N, 0:N]
    v = np.linspace(rng.uniform(1600, 2500), rng.uniform(2800, 4000), N)[:, None] + np.zeros((1, N))
    for _ in range(int(rng.integers(1, 4))):
        cz, cx = rng.uniform(10, 60, 2)
        rz, rx = rng.uniform(4, 14), rng.uniform(6, 25)
        inside = ((zz - cz) / rz) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        v[inside] = rng.uniform(VMIN + 100, VMAX - 100)
    return v


DRAW = {"B_layers": layers, "B_smooth": smooth, "B_bodies": bodies}


def velocity_batch(family: str, seed: int, start: int, n: int) -> np.ndarray:
    """(n, 70, 70) float32 m/s: maps ``start`` .. ``start + n - 1`` of a family."""
    return np.stack([np.clip(DRAW[family](rng_for(family, seed, start + i)), VMIN, VMAX)
                     for i in range(n)]).astype(np.float32)


def make(out: str, name: str, per_family: int, *, seed: int = SEED, backend: str = "openfwi", device: str = "cpu",
         batch_size: int = 8, families: tuple[str, ...] = FAMILIES) -> dict:
    """The benchset as a gwi dataset ``name`` in store ``out``; returns its manifest."""
    import torch

    from gwi import physics
    from gwi.data.shards import DatasetWriter

    fm = physics.backend(backend, device=device)
    source = {"kind": "benchset-b", "families": list(families), "samples_per_family": per_family, "seed": seed,
              "backend": backend, **fm.describe()}
    with DatasetWriter(out, name, source=source, labelled=True) as w:
        for fam in families:
            for start in range(0, per_family, batch_size):
                v = velocity_batch(fam, seed, start, min(batch_size, per_family - start))
                with torch.no_grad():
                    x = fm(torch.from_numpy(v)).float().cpu().numpy()  # (n, 5, 1000, 70)
                w.add(fam, x, v[:, None], src=f"benchset-b:{fam}:seed={seed}", first=start)
        return w.finish()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="store URL (file://DIR or s3://BUCKET)")
    p.add_argument("--name", default="benchset-b")
    p.add_argument("--per-family", type=int, default=16)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--backend", default="openfwi", choices=("openfwi", "deepwave"))
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    m = make(a.out, a.name, a.per_family, seed=a.seed, backend=a.backend, device=a.device)
    print(f"{a.out.rstrip('/')}/datasets/{a.name}: {m['num_samples']} samples, families {', '.join(m['families'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

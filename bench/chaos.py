"""The chaos soak: rounds of the chaos test's plan under the seeded fault driver for --minutes.

    python bench/chaos.py --minutes 60 --seed 7

Prints one line per round, then the table (faults per kind, jobs, attempts, steps lost, instances
and processes left, secrets found, wall time, seed) and every fault injected; exits 1 when any
check failed, with what failed. See tests/chaos.py for the world, the driver and the checks.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.chaos import chaos


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60, help="run rounds until this much time has passed")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--epochs", type=int, default=40, help="epochs of each training job (3 steps each)")
    ap.add_argument("--storm-s", type=float, default=80, help="faults during the first S seconds of a round")
    ap.add_argument("--mean-gap-s", type=float, default=6.0, help="mean seconds between faults")
    ap.add_argument("--no-lambda", action="store_true", help="only the two local platforms")
    ap.add_argument("--keep", action="store_true", help="keep the world's folder (printed) for a look after")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gwi-chaos-"))
    print(f"seed {a.seed}, {a.minutes:g} min, {platform.node()} ({platform.processor() or platform.machine()}), "
          f"world in {root}", flush=True)
    report = chaos(root / "w", a.seed, minutes=a.minutes, epochs=a.epochs, storm_s=a.storm_s,
                   mean_gap_s=a.mean_gap_s, use_lambda=not a.no_lambda, log=lambda m: print(m, flush=True))
    print(report.text())
    if not a.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())

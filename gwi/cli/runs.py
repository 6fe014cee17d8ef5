"""``gwi runs``: the training runs in a store, listed and compared."""

from __future__ import annotations

import json
from pathlib import Path

from ..console import table
from ..errors import GwiError


def cmd_runs_list(a) -> int:
    from ..store import default_store_url
    from ..tracking import RUN_COLUMNS, find_runs, run_metrics, summary_row

    urls = find_runs(a.store or default_store_url())
    rows = [summary_row(u, run_metrics(u)) for u in urls]
    if a.json:
        print(json.dumps([dict(zip(RUN_COLUMNS, r)) for r in rows], indent=1))
    elif not rows:
        print(f"no runs in {a.store or default_store_url()}")
    else:
        print(table(rows, RUN_COLUMNS))
    return 0


def cmd_runs_compare(a) -> int:
    from ..runs import METRICS
    from ..store import staged_output
    from ..tracking import RUN_COLUMNS, plot_curves, run_metrics, summary_row

    metrics = {u: run_metrics(u) for u in a.runs}
    missing = [u for u, m in metrics.items() if m is None]
    if missing:
        raise GwiError(f"runs compare: no {METRICS} (unfinished or not a run): " + ", ".join(missing))
    print(table([summary_row(u, m) for u, m in metrics.items()], RUN_COLUMNS))
    if a.plot:
        names = [u.rstrip("/").rsplit("/", 1)[-1] for u in a.runs]
        labels = names if len(set(names)) == len(names) else a.runs
        with staged_output(a.plot) as out:
            plot_curves({lab: metrics[u]["history"] for lab, u in zip(labels, a.runs)}, Path(out))
        print(f"curves of {len(a.runs)} runs in {a.plot}")
    return 0


def add_runs(sub) -> None:
    q = sub.add_parser("runs", help="training runs in a store: list them, compare them (table and curves)")
    rsub = q.add_subparsers(dest="runs_cmd", metavar="SUBCOMMAND")
    rsub.required = True
    q = rsub.add_parser("list", help="every run in a store: model, data, steps, validation MAE per family, time")
    q.add_argument("store", nargs="?", help="store URL (default: the embedded store)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_runs_list)
    q = rsub.add_parser("compare", help="runs side by side, and their curves drawn together (--plot)")
    q.add_argument("runs", nargs="+", metavar="RUN_URL")
    q.add_argument("--plot", metavar="PNG", help="draw their loss and validation MAE against step into this file")
    q.set_defaults(fn=cmd_runs_compare)


COMMANDS = {"runs": add_runs}

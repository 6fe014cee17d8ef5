"""The ``gwi`` command. Parsing and printing only: the work lives in the modules it calls.

One module per command group, each holding its commands' parsers beside their handlers
(``add_<command>(sub)`` next to ``cmd_<command>(args)``) and a ``COMMANDS`` table of its parsers;
this module only assembles them, in the order ``gwi --help`` lists them, and runs :func:`main`.
A group imports its heavy libraries inside the handlers, so ``--help``, ``status`` and
``dispatch --dry-run`` load no torch."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .. import __version__
from ..errors import EXIT_STORE_UNAVAILABLE, GwiError
from . import data, kaggle, models, physics, plans, runs, system, views

GROUPS = (data, models, physics, plans, views, runs, kaggle, system)

# the order `gwi --help` lists the commands in: a team's week, from data to the scheduler's views
ORDER = ("data", "models", "train", "predict", "ensemble", "evaluate", "submission", "refine", "merge",
         "check", "dashboard", "exec", "runs", "completion", "init", "dispatch", "status", "platforms",
         "watch", "doctor", "instances", "sweep", "cancel", "logs", "history", "kaggle")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gwi", description="Seismic FWI team runner: data, training, dispatch, submission.")
    p.add_argument("--version", action="version", version=f"gwi {__version__}")
    p.add_argument("--platforms", metavar="DIR", action="append", default=[],
                   help="also read platform profiles from DIR (a project's platforms/ folder); repeatable. "
                        "Profiles that send secrets somewhere new must be trusted first: gwi platforms --trust FILE")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True
    adders = {name: add for g in GROUPS for name, add in g.COMMANDS.items()}
    assert sorted(adders) == sorted(ORDER), "a command is missing from ORDER or from its group's COMMANDS"
    for name in ORDER:
        adders[name](sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from .. import progress

    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions (gwi completion installs the hook)
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    if args.platforms:  # through the environment, so the scheduler and the jobs it starts see the same profiles
        os.environ["GWI_PLATFORMS"] = os.pathsep.join(
            [str(Path(d).resolve()) for d in args.platforms] + [p for p in [os.environ.get("GWI_PLATFORMS")] if p])
    # launched by the scheduler: beat from the first second, so a slow start is not taken for a stall
    progress.start_process_heartbeat(" ".join(sys.argv[1:3] if argv is None else argv[:2]))
    rc, err = 1, None
    try:
        rc = int(args.fn(args) or 0)
        return rc
    except (GwiError, ValueError, TypeError) as e:
        err = f"{type(e).__name__}: {e}"
        rc = getattr(e, "exit_code", 1)  # 75: the store was unreachable, worth retrying later (not a bug)
        if os.environ.get("GWI_DEBUG"):
            raise
        print(f"gwi: error: {e}", file=sys.stderr)
        return rc
    except KeyboardInterrupt:
        err = "interrupted"
        print("gwi: interrupted", file=sys.stderr)
        rc = 130
        return 130
    except BrokenPipeError:
        # the reader went away (``gwi status | head -1``): stop quietly, as a tool killed by SIGPIPE
        # would; stdout goes to /dev/null so the interpreter's last flush does not fail again
        err, rc = None, 141
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except BaseException as e:
        err = f"{type(e).__name__}: {e}"
        raise
    finally:
        if rc == 0 and err is None:
            progress.end_process_heartbeat("succeeded")
        else:
            progress.end_process_heartbeat("failed", error=err or f"exit status {rc}",
                                           retryable=rc == EXIT_STORE_UNAVAILABLE)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

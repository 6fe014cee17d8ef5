"""Setting up and diagnosing: ``gwi init``, ``check``, ``doctor`` and the shell's ``completion``."""

from __future__ import annotations

import json
from pathlib import Path

from ..console import table


def cmd_init(a) -> int:
    from ..paths import HOME_DIR, find_home

    folder = Path(a.folder).resolve()
    target = folder / HOME_DIR
    if target.is_dir():
        print(f"{target} exists: gwi keeps its state there for {folder} and the folders below")
        return 0
    outer = find_home(folder)
    target.mkdir(mode=0o700, parents=True)
    print(f"created {target}: gwi keeps its state and the embedded store (file://{target / 'store'}) there for "
          f"{folder} and the folders below" + (f", instead of {outer}" if outer else "")
          + " ($GWI_HOME, when set, still wins)")
    return 0


def add_init(sub) -> None:
    q = sub.add_parser("init", help="make a .gwi/ folder here: gwi's state for this folder and those below (like git init)")
    q.add_argument("folder", nargs="?", default=".", help="where (default: the current folder)")
    q.set_defaults(fn=cmd_init)


def cmd_check(a) -> int:
    from ..adapters.base import load_profiles
    from ..check import check, render
    from ..store import default_store_url

    sections = check(load_profiles(), a.store or default_store_url(), a.deadline)
    if a.json:
        print(json.dumps([s.as_json() for s in sections], indent=1))
    else:
        print(render(sections))
    store_ok = sections[-1].ok
    return 0 if store_ok and any(s.ok for s in sections[:-1]) else 1


def add_check(sub) -> None:
    q = sub.add_parser("check", help="which platforms and store can be used now: credentials, a live call, the fix")
    q.add_argument("--store", metavar="URL", help="the store to check (default: the embedded store)")
    q.add_argument("--deadline", type=float, default=10.0, metavar="S", help="seconds each live call may take")
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_check)


def cmd_doctor(a) -> int:
    from ..doctor import doctor
    from ..scheduler import gwi_home

    findings = doctor(gwi_home(), fix=a.fix)
    rows = [[f.area, "fixed" if f.fixed else "ok" if f.ok else "PROBLEM", f.message] for f in findings]
    print(table(rows, ["area", "", "finding"]))
    bad = [f for f in findings if not (f.ok or f.fixed)]
    if bad and not a.fix:
        print("\ngwi doctor --fix repairs what it safely can (it says what it does)")
    return 1 if bad else 0


def add_doctor(sub) -> None:
    q = sub.add_parser("doctor", help="check the state, the profiles, the stores and the cache; --fix repairs "
                                      "what it safely can")
    q.add_argument("--fix", action="store_true",
                   help="move a corrupt state aside and restore its backup, remove stale temp and lock files")
    q.set_defaults(fn=cmd_doctor)


def cmd_completion(a) -> int:
    import argcomplete

    print(argcomplete.shellcode(["gwi"], shell=a.shell))
    return 0


def add_completion(sub) -> None:
    q = sub.add_parser("completion", help="print the shell's completion hook: eval \"$(gwi completion bash)\"")
    q.add_argument("shell", nargs="?", default="bash", choices=["bash", "zsh", "fish", "tcsh", "powershell"])
    q.set_defaults(fn=cmd_completion)


COMMANDS = {"init": add_init, "check": add_check, "doctor": add_doctor, "completion": add_completion}

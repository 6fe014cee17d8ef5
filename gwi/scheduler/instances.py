"""The machines gwi launched, on every platform, and the attempts that own them: ``gwi instances``.

Each adapter lists what it runs for gwi (``instances(workroot)``: plain dicts with ``id``, ``name``,
``attempt_id``, ``state``, ``started``, ``usd_per_hour``), found by gwi's naming (``gwi-<attempt>``
instances, ``<prefix>-...`` kernels, processes carrying ``GWI_ATTEMPT``), not by this state. Each is
matched with the state's attempts, by its attempt's handle first, then by the attempt id in its
name: it is *owned* while that attempt is live (pending or running), and an *orphan* otherwise (its
attempt ended, or this state never knew it: a lost or reset ``GWI_HOME``). ``stop_orphans`` stops
each orphan through its adapter, whose calls have deadlines, and says how each went.

Only reads the state (a :class:`~gwi.scheduler.view.View`), so it runs beside a watcher; an
instance whose attempt this state does not know may be a teammate's on a shared account: the
listing says ``not in this state`` so a person can tell before stopping it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..adapters.base import PlatformError
from ..errors import GwiError
from .lifecycle import ACTIVE
from .view import View


@dataclass
class Listing:
    instances: list[dict] = field(default_factory=list)  # each with platform, owner, live, orphan
    errors: list[tuple[str, str]] = field(default_factory=list)  # (platform, why it could not be listed)

    @property
    def orphans(self) -> list[dict]:
        return [i for i in self.instances if i["orphan"]]


def _handle_keys(handle: dict) -> set[str]:
    """What names a launch's machine in the adapters' listings: an instance id, a kernel, a container,
    a process group (the wrapper's pid leads it)."""
    keys = {str(handle[k]) for k in ("instance_id", "kernel", "container") if handle.get(k)}
    if handle.get("container"):
        keys.add(f"container:{handle['container']}")
    if handle.get("pid"):
        keys.add(f"pgid:{handle['pid']}")
    return keys


def _owners(view: View) -> dict[str, str]:
    """Handle key -> id of the live attempt whose handle it is."""
    owners = {}
    for row in view.state.active_attempts():
        if row["handle"]:
            try:
                handle = json.loads(row["handle"])
            except ValueError:
                continue
            for key in _handle_keys(handle):
                owners[key] = row["id"]
    return owners


def list_instances(view: View, platforms: list[str] | None = None) -> Listing:
    """Every machine gwi launched on ``platforms`` (default: every profile), with its owner."""
    listing, seen = Listing(), set()
    owners = _owners(view)
    workroot = Path(view.home) / "attempts"
    for name in platforms or sorted(view.profiles):
        try:
            adapter = view.adapter(name)
            lister = getattr(adapter, "instances", None)
            why_not = adapter.available() if lister else None
            if lister is None or why_not:
                if why_not:
                    listing.errors.append((name, why_not))
                continue
            found = lister(workroot)
        except (GwiError, PlatformError) as e:
            listing.errors.append((name, str(e)))
            continue
        for inst in found:
            key = (view.profiles[name].adapter, inst["id"])
            if key in seen:  # two profiles on one account (kaggle, kaggle-offline) list the same kernels
                continue
            seen.add(key)
            listing.instances.append(_judged(view, name, inst, owners))
    return listing


def _judged(view: View, platform: str, inst: dict, owners: dict[str, str]) -> dict:
    owner = owners.get(str(inst["id"])) or owners.get(str(inst.get("name")))
    row = view.state.attempt(owner or inst.get("attempt_id") or "")
    live = row is not None and row["state"] in ACTIVE
    return {**inst, "platform": platform, "owner": row["id"] if row is not None else inst.get("attempt_id"),
            "owner_state": row["state"] if row is not None else None, "known": row is not None, "live": live,
            "orphan": not live}


def stop_orphans(view: View, listing: Listing) -> list[tuple[dict, str | None]]:
    """Stop every orphan through its platform's adapter: (instance, None) when stopped, else why not."""
    out = []
    for inst in listing.orphans:
        adapter = view.adapter(inst["platform"])
        try:
            adapter.stop_instance(inst)
            out.append((inst, None))
        except Exception as e:  # noqa: BLE001 - each is reported; the others are still stopped
            out.append((inst, str(adapter.translate(e))))
    return out


def sweep(view: View, log=print) -> int:
    """What ``gwi watch --forever`` does every hour: stop the machines whose attempt this state knows
    has ended (a stop that failed, a state restored from a backup). One this state never knew is
    left alone: on a shared account it may be a teammate's (``gwi instances`` shows it). Returns how
    many were stopped."""
    listing = list_instances(view)
    ended = Listing([i for i in listing.orphans if i["known"]])
    stopped = 0
    for inst, err in stop_orphans(view, ended):
        log(f"{inst['platform']}: {inst['name']} (attempt {inst['owner']} {inst['owner_state']}): "
            + ("stopped" if err is None else f"NOT stopped: {err}"))
        stopped += err is None
    return stopped


def _why(inst: dict) -> str:
    if inst["live"]:
        return f"attempt {inst['owner']} ({inst['owner_state']})"
    if inst["known"]:
        return f"ORPHAN: attempt {inst['owner']} is {inst['owner_state']}"
    owner = f"attempt {inst['owner']}" if inst["owner"] else "no attempt id"
    return f"ORPHAN: {owner}, not in this state"


def table(listing: Listing) -> str:
    """The listing as ``gwi instances`` prints it."""
    if not listing.instances:
        lines = ["no machines launched by gwi are running"]
    else:
        rows = [(i["platform"], str(i["name"]), str(i["state"]), f"${i['usd_per_hour'] or 0:.2f}/h", _why(i))
                for i in listing.instances]
        head = ("platform", "machine", "state", "price", "owner")
        widths = [max(len(r[c]) for r in rows + [head]) for c in range(len(head))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in [head] + rows]
        n = len(listing.orphans)
        if n:
            lines.append(f"\n{n} orphan(s): `gwi instances --stop-orphans` stops them")
    lines += [f"{platform}: not listed: {why}" for platform, why in listing.errors]
    return "\n".join(lines)


def command(view: View, stop: bool = False, as_json: bool = False, log=print) -> int:
    """``gwi instances [--stop-orphans] [--json]``: 0, or 1 when a platform could not be listed or an
    orphan could not be stopped."""
    listing = list_instances(view)
    stopped = stop_orphans(view, listing) if stop else []
    if as_json:
        log(json.dumps({"instances": listing.instances,
                        "errors": [{"platform": p, "error": e} for p, e in listing.errors],
                        "stopped": [{"id": i["id"], "platform": i["platform"], "error": err} for i, err in stopped]},
                       indent=1, default=str))
    else:
        log(table(listing))
        for inst, err in stopped:
            log(f"{inst['platform']}: {inst['name']}: " + ("stopped" if err is None else f"NOT stopped: {err}"))
    return 1 if listing.errors or any(err for _, err in stopped) else 0

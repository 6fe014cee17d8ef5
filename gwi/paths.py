"""Where gwi keeps its things (:func:`gwi_home`), and joining names a platform hands us (a kernel's output files, a remote listing, a manifest's shard
paths) to a local folder without letting them escape it.

A name from a platform is data, not a path we chose: ``../../.bashrc``, ``/etc/passwd``, ``C:x``,
``a\\..\\..\\b`` or a symlink the platform planted earlier must not write outside the folder the
download targets. :func:`safe_join` is the one place that decides; every download uses it.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from .errors import GwiError


HOME_DIR = ".gwi"  # what ``gwi init`` makes, and what the search upward looks for


def find_home(start: str | Path | None = None) -> Path | None:
    """The nearest ``.gwi/`` folder from ``start`` (the current folder) upward, like git's ``.git``."""
    here = Path(start or os.getcwd()).resolve()
    for d in (here, *here.parents):
        if (d / HOME_DIR).is_dir():
            return d / HOME_DIR
    return None


def user_home() -> Path:
    """The user's own gwi folder, for work run outside any project (``~/.local/share/gwi`` on Linux)."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("gwi", appauthor=False))


def gwi_home() -> Path:
    """Where gwi keeps its state (``state.db``, the embedded store, sweeps, attempts): ``$GWI_HOME``
    when set (it wins, as ``GIT_DIR`` does over git's search); else the nearest ``.gwi/`` from the
    current folder upward; else :func:`user_home`."""
    env = os.environ.get("GWI_HOME")
    if env:
        return Path(env).expanduser().resolve()
    return find_home() or user_home()


def home_origin() -> str:
    """Why :func:`gwi_home` is where it is, for a person reading ``gwi status``."""
    if os.environ.get("GWI_HOME"):
        return "$GWI_HOME"
    return "the nearest .gwi/ above this folder" if find_home() else "the user's gwi folder: no .gwi/ here or above; gwi init makes one"


class UnsafePath(GwiError):
    """A remote-supplied name would land outside the folder it is meant for."""


_DRIVE = re.compile(r"^[A-Za-z]:")


def safe_join(root: str | Path, name: str) -> Path:
    """``root / name`` for a relative, forward-slash ``name`` that stays inside ``root``.

    Refused (:class:`UnsafePath`, naming ``name`` and ``root``): an empty name, NUL bytes, absolute
    paths, drive letters (``C:``), backslashes (a Windows separator in a POSIX name is either a trick
    or a name we would mangle), ``..`` components, and a symlink already on disk along the way (or
    at the end) that resolves outside ``root``. ``.`` and repeated slashes are folded. The result
    is not created; a symlink *inside* root stays allowed (a cache may link shards).
    """
    root = Path(root)
    text = str(name) if isinstance(name, (str, os.PathLike)) else None

    def refuse(why: str) -> UnsafePath:
        return UnsafePath(f"refusing remote name {name!r} under {str(root)!r}: {why}")

    if not text:
        raise refuse("expected a non-empty relative name")
    if "\x00" in text:
        raise refuse("it contains a NUL byte")
    if "\\" in text:
        raise refuse("it contains a backslash")
    if text.startswith("/") or _DRIVE.match(text):
        raise refuse("expected a relative name, got an absolute path")
    parts = [p for p in PurePosixPath(text).parts if p != "."]
    if not parts:
        raise refuse("it names the folder itself, not a file in it")
    if ".." in parts:
        raise refuse("it contains '..'")
    real_root = root.resolve()
    target = root.joinpath(*parts)
    # walk each prefix: a link planted at any level (or the name itself) may point out of root
    here = root
    for part in parts:
        here = here / part
        if here.is_symlink():
            try:
                resolved = here.resolve()
            except (OSError, RuntimeError):  # a link loop: nothing we could safely write through
                raise refuse(f"{str(here)!r} is a symlink loop") from None
            if resolved != real_root and real_root not in resolved.parents:
                raise refuse(f"{str(here)!r} is a symlink to {str(resolved)!r}, outside the folder")
    return target


@contextmanager
def atomic_open(path: str | os.PathLike):
    """A text file to write that appears under ``path`` only whole: a temp file beside it, synced and
    renamed when the block succeeds, removed when it fails (what was at ``path`` stays as it was)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", newline="") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

"""The competition through the official ``kaggle`` package: its data and its submissions
(``gwi kaggle download``, ``gwi kaggle submit``, ``gwi kaggle submissions``).

The package does the transfers: a download resumes from a partial file when the remote object is
the same one (its ``.kaggle-partial`` marker holds the ETag and size), an upload is the package's
resumable upload. What gwi adds: the Kaggle profile's endpoint, timeouts and credentials (the
environment or ``kaggle.json``); one translation of the errors Kaggle gives (rules not accepted,
no such competition, bad credentials) into a line that says what to do; retries of what may be
retried; and an unzip that resumes too (a 100 GB archive cut off at 90% keeps what it extracted:
each member is written beside its place and renamed when whole), with a marker so a finished
download is not fetched again.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
import zipfile
from pathlib import Path

from ..errors import GwiError
from ..paths import safe_join
from .base import PlatformError

COMPETITION = "waveform-inversion"  # the Yale/UNC-CH Geophysical Waveform Inversion competition
MARKER = ".gwi-download.json"  # in the unzipped folder: what was downloaded, when; present only once whole


def competition_error(competition: str, err: PlatformError) -> GwiError:
    """Kaggle's refusals as what to do about them."""
    text = str(err)
    if " 403" in text or "forbidden" in text.lower() or "rules" in text.lower():
        return GwiError(f"Kaggle refused access to competition {competition!r} ({text}): accept its rules at "
                        f"https://www.kaggle.com/competitions/{competition}/rules with the account of your "
                        "credentials, then run this again")
    if " 404" in text or "not found" in text.lower():
        return GwiError(f"Kaggle has no competition {competition!r} ({text}); the slug is the last part of its URL, "
                        f"e.g. {COMPETITION}")
    if err.kind == "auth":
        return GwiError(f"{text}: check the token (kaggle.com > Settings > API); gwi check shows where it was found")
    return GwiError(text)


def _call(adapter, competition: str, fn, *args, **kw):
    try:
        return adapter._call(fn, *args, **kw)
    except PlatformError as e:
        raise competition_error(competition, e) from None


def download(adapter, competition: str, folder: str | os.PathLike, *, force: bool = False, keep_zip: bool = False,
             quiet: bool = False, log=print) -> Path:
    """The competition's files unzipped into ``folder/<competition>``; returns that folder.

    Run again after an interruption, it goes on where it stopped (the download from its partial
    file, the unzip from the members already written); once whole it does nothing unless ``force``."""
    folder = Path(folder).expanduser()
    root = folder / competition
    marker = root / MARKER
    if marker.exists() and not force:
        done = json.loads(marker.read_text())
        log(f"{root}: downloaded and unzipped {done.get('finished', '?')} ({done.get('files', '?')} files); "
            "--force fetches it again")
        return root
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / f"{competition}.zip"
    if not (archive.exists() and root.exists() and not force):  # else: an unzip cut off after the download
        log(f"downloading competition {competition} into {folder} (resumes where a previous try stopped)")
        _call(adapter, competition, adapter.api.competition_download_files, competition, path=str(folder),
              force=force, quiet=quiet)
    if not archive.exists():
        found = sorted(p.name for p in folder.glob(f"{competition}.*"))
        raise GwiError(f"the download of {competition} left no {archive}" + (f" (found {', '.join(found)})" if found
                                                                               else ""))
    files, written = unzip(archive, root)
    marker.write_text(json.dumps({"competition": competition, "archive_bytes": archive.stat().st_size,
                                  "files": files, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
    log(f"unzipped {files} files into {root} ({written} written now, {files - written} already there)")
    if not keep_zip:
        archive.unlink()
    return root


def unzip(archive: Path, root: Path) -> tuple[int, int]:
    """Every file of ``archive`` under ``root``; a member already there at its full size is kept.
    Returns (files in the archive, files written now). The member list is checked whole before
    anything is written (names that leave ``root``, links, a file that another member needs as a
    folder), and each file lands by rename from a ``.part``: a stop leaves only whole files, which a
    rerun keeps, and ``.part`` files, which it writes again."""
    try:
        z = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as e:
        raise GwiError(f"{archive}: not a whole zip archive ({e}); delete it and run this again") from None
    written = 0
    with z:
        members = [m for m in z.infolist() if not m.is_dir()]
        targets = _check_members(archive, root, z.infolist())
        for m in members:
            dest = targets[m.filename]
            try:
                if dest.is_file() and dest.stat().st_size == m.file_size:
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                part = dest.with_name(dest.name + ".part")
                with z.open(m) as src, open(part, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                os.replace(part, dest)
            except OSError as e:  # what is already on disk is in the way (a folder where a file goes)
                raise GwiError(f"{archive}: member {m.filename!r} cannot be written to {dest}: {e.strerror or e}; "
                               f"move what is there aside and run this again") from None
            written += 1
    return len(members), written


def _check_members(archive: Path, root: Path, infos: list[zipfile.ZipInfo]) -> dict[str, Path]:
    """Each file member's destination under ``root``, or one error naming the first bad member."""
    files: dict[str, Path] = {}
    folders: set[str] = set()
    for m in infos:
        name = m.filename.rstrip("/")
        if stat.S_ISLNK(m.external_attr >> 16):
            raise GwiError(f"{archive}: member {m.filename!r} is a symbolic link; not unzipped (gwi extracts "
                           "files and folders only)")
        parts = name.split("/")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
        if m.is_dir():
            folders.add(name)
            continue
        if name in files:
            raise GwiError(f"{archive}: member {m.filename!r} appears twice; not unzipped")
        files[name] = safe_join(root, m.filename)  # a member named ../x or /etc/x is refused, not written
    clash = sorted(set(files) & folders)
    if clash:
        raise GwiError(f"{archive}: member {clash[0]!r} is a file, and other members need it as a folder "
                       f"({clash[0]}/...); not unzipped")
    return files


def submit(adapter, competition: str, path: str | os.PathLike, message: str) -> str:
    """Upload ``path`` as a submission; returns Kaggle's answer. Not retried: a second upload after
    one that was received would count twice against the day's submissions."""
    r = _call(adapter, competition, adapter.api.competition_submit, str(path), message, competition, quiet=True,
              retry=False)
    text = getattr(r, "message", None) or str(r)
    if "fail" in text.lower() and "upload" in text.lower():
        raise GwiError(f"submission of {path} to {competition} failed: {text}")
    return text


SUBMISSION_FIELDS = ("date", "description", "status", "public_score", "private_score", "file_name", "ref")


def submissions(adapter, competition: str, limit: int = 20) -> list[dict]:
    """The account's latest submissions to ``competition``, newest first, as plain dicts."""
    rows = _call(adapter, competition, adapter.api.competition_submissions, competition, page_size=limit) or []
    out = []
    for s in rows:
        if s is None:
            continue
        status = getattr(s, "status", None)
        out.append({"date": str(getattr(s, "date", "") or ""), "description": getattr(s, "description", "") or "",
                    "status": getattr(status, "name", str(status or "")).lower().replace("submission_status_", ""),
                    "public_score": getattr(s, "public_score", None) or None,
                    "private_score": getattr(s, "private_score", None) or None,
                    "file_name": getattr(s, "file_name", "") or "", "ref": getattr(s, "ref", None)})
    return out

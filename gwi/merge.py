"""``gwi merge``: join the submissions written by shards (``--shard i/N`` of refine or predict).

Every part is checked as a submission first; an oid found in two parts is an error (two shards
did the same file: a wrong shard spec), as is one missing when ``test`` says which oids must be
there. ``base`` supplies rows for oids no part holds (a refine of the worst files only). The
result is written to a temp file and renamed: never half a file under the final name.
"""

from __future__ import annotations

import csv

from .errors import DataError
from .paths import atomic_open
from .predict import HEADER, _ID, TestSource, check_submission


def _rows(path: str, name: str) -> dict[str, list[str]]:
    summary, problems = check_submission(path)
    if problems:
        raise DataError(f"{name}: not a valid submission:\n  " + "\n  ".join(problems))
    out: dict[str, list[str]] = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        next(reader)
        for rec in reader:
            out.setdefault(_ID.match(rec[0]).group(1), []).append(",".join(rec))
    return out


def merge(parts: list[str], out: str, *, test: str | None = None, base: str | None = None,
          names: list[str] | None = None, base_name: str | None = None) -> dict:
    """``parts`` (and ``base``) are local files; ``names``/``base_name`` are what errors call them
    (the store URLs they were fetched from). ``test``: a folder of test files or a dataset."""
    rows: dict[str, list[str]] = {}
    where: dict[str, str] = {}
    for p, name in zip(parts, names or parts):
        for oid, r in _rows(p, name).items():
            if oid in rows:
                raise DataError(f"oid {oid} is in both {where[oid]} and {name}: the shards overlap")
            rows[oid], where[oid] = r, name
    base_name = base_name or base
    base_rows = _rows(base, base_name) if base else {}
    if test is not None:
        order = list(TestSource(test).oids)
        extra = sorted(set(rows) - set(order))
        if extra:
            raise DataError(f"{where[extra[0]]}: oid {extra[0]} is not in the test folder {test}"
                            + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    else:
        order = list(base_rows) + sorted(set(rows) - set(base_rows)) if base_rows else sorted(rows)
    missing = [o for o in order if o not in rows and o not in base_rows]
    if missing:
        raise DataError(f"{len(missing)} file(s) in no part{' nor in ' + base_name if base else ''}: "
                        f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    from_base = sum(o not in rows for o in order)
    with atomic_open(out) as f:
        f.write(HEADER + "\n")
        for o in order:
            f.write("\n".join(rows.get(o) or base_rows[o]) + "\n")
    return {"files": len(order), "parts": len(parts), "from_base": from_base}

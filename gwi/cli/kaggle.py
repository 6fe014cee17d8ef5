"""``gwi kaggle``: the kernel's dataset (``package``) and the competition's data and submissions."""

from __future__ import annotations

import json
import sys

from ..console import dataset_summary, table
from ..errors import GwiError


def cmd_kaggle_package(a) -> int:
    from ..adapters.kaggle import package

    r = package(a.out, a.id, runs=a.run, ensembles=a.ensemble, wheel=a.wheel, with_deps=a.with_deps, title=a.title,
                log=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"wrote {r['folder']}: {len(r['wheels'])} wheel(s), {len(r['mirrored'])} file(s) of the store mirrored")
    for f in r["mirrored"]:
        print(f"  {f}")
    print(f"\nupload: kaggle datasets create -p {r['folder']}   (later: kaggle datasets version -p {r['folder']} -m NOTE)")
    return 0


def _kaggle_adapter(platform: str):
    from ..adapters.base import get_adapter, load_profiles

    profiles = load_profiles()
    p = profiles.get(platform)
    if p is None or p.adapter != "kaggle":
        kaggle = sorted(n for n, q in profiles.items() if q.adapter == "kaggle")
        raise GwiError(f"--platform: expected a Kaggle profile ({', '.join(kaggle) or 'none found'}), got {platform!r}")
    ad = get_adapter(p)
    why = ad.available()
    if why:
        raise GwiError(f"{platform}: {why}; gwi check says what it found")
    return ad


def cmd_kaggle_download(a) -> int:
    from ..adapters.kaggle_competition import download
    from ..data.prep import prep_test, prep_train
    from ..data.shards import existing_dataset
    from ..store import default_store_url

    root = download(_kaggle_adapter(a.platform), a.competition, a.dir, force=a.force, keep_zip=a.keep_zip,
                    log=lambda m: print(m, flush=True))
    if a.no_prep:
        return 0
    out = a.out or default_store_url()
    work = [(a.name, "kaggle-train", prep_train, root)]
    if (root / "test").is_dir():
        work.append((a.test_name, "kaggle-test", prep_test, root / "test"))
    else:
        print(f"no test/ folder in {root}: only the training data is prepared")
    for name, kind, prep, src in work:
        if not a.overwrite:
            try:
                if existing_dataset(out, name, {"kind": kind, "path": str(src.resolve())}):
                    print(f"{out.rstrip('/')}/datasets/{name}: already prepared from {src} (--overwrite redoes it)")
                    continue
            except ValueError as e:
                raise GwiError(str(e)) from None
        m = prep(src, out, name, overwrite=a.overwrite)
        print(dataset_summary(m, out.rstrip("/") + f"/datasets/{name}"))
    return 0


def cmd_kaggle_submit(a) -> int:
    from ..adapters.kaggle_competition import submit
    from ..predict import check_submission

    summary, problems = check_submission(a.file, a.test)
    if problems:
        raise GwiError(f"{a.file}: not submitted, not a valid submission:\n  " + "\n  ".join(problems))
    ad = _kaggle_adapter(a.platform)
    print(f"{a.file}: valid ({summary['oids']} maps, {summary['rows']} rows); submitting to {a.competition}")
    print(submit(ad, a.competition, a.file, a.message))
    print("scores: gwi kaggle submissions")
    return 0


def cmd_kaggle_submissions(a) -> int:
    from ..adapters.kaggle_competition import SUBMISSION_FIELDS, submissions

    rows = submissions(_kaggle_adapter(a.platform), a.competition, a.limit)
    if a.json:
        print(json.dumps(rows, indent=1))
    elif not rows:
        print(f"no submissions to {a.competition} yet")
    else:
        print(table([[r[k] if r[k] is not None else "-" for k in SUBMISSION_FIELDS[:-1]] for r in rows],
                     ["date", "description", "status", "public MAE", "private MAE", "file"]))
    return 0


def add_kaggle(sub) -> None:
    q = sub.add_parser("kaggle", help="Kaggle helpers")
    ksub = q.add_subparsers(dest="kcmd", required=True)
    q = ksub.add_parser("package", help="the dataset a Kaggle kernel attaches: gwi wheel(s) + a store mirror of runs")
    q.add_argument("--out", required=True, metavar="DIR")
    q.add_argument("--id", required=True, metavar="OWNER/SLUG", help="the Kaggle dataset id")
    q.add_argument("--run", action="append", default=[], metavar="URL", help="a run whose latest checkpoint to include")
    q.add_argument("--ensemble", action="append", default=[], metavar="URL",
                   help="an ensemble.json to include, with its members' checkpoints")
    q.add_argument("--wheel", metavar="FILE", help="a gwi wheel (default: build one from this source tree)")
    q.add_argument("--with-deps", action="store_true", help="also the dependencies' wheels, for kernels without internet")
    q.add_argument("--title")
    q.set_defaults(fn=cmd_kaggle_package)

    def competition_args(q):
        from ..adapters.kaggle_competition import COMPETITION

        q.add_argument("--competition", default=COMPETITION, help=f"the competition's slug (default {COMPETITION})")
        q.add_argument("--platform", default="kaggle", help="the Kaggle profile whose credentials and endpoint to use")

    q = ksub.add_parser("download", help="the competition's data, resumable, then gwi data prep of train and test")
    competition_args(q)
    q.add_argument("--dir", default="~/kaggle", help="where to unzip it: DIR/<competition> (default ~/kaggle)")
    q.add_argument("--out", metavar="STORE_URL", help="store the prepared datasets go to (default: the embedded store)")
    q.add_argument("--name", default="kaggle-train-f16", help="the prepared training set's name (default kaggle-train-f16)")
    q.add_argument("--test-name", default="kaggle-test-f16", help="the prepared test set's name (default kaggle-test-f16)")
    q.add_argument("--overwrite", action="store_true", help="prepare again over datasets of those names")
    q.add_argument("--no-prep", action="store_true", help="download and unzip only")
    q.add_argument("--force", action="store_true", help="download again even if a whole copy is there")
    q.add_argument("--keep-zip", action="store_true", help="keep the archive after unzipping")
    q.set_defaults(fn=cmd_kaggle_download)

    q = ksub.add_parser("submit", help="validate a submission.csv and submit it")
    competition_args(q)
    q.add_argument("file", metavar="FILE")
    q.add_argument("-m", "--message", required=True, help="the submission's description")
    q.add_argument("--test", metavar="DIR", help="the test folder: also check that every oid is there")
    q.set_defaults(fn=cmd_kaggle_submit)

    q = ksub.add_parser("submissions", help="your submissions and their scores")
    competition_args(q)
    q.add_argument("--limit", type=int, default=20)
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_kaggle_submissions)


COMMANDS = {"kaggle": add_kaggle}

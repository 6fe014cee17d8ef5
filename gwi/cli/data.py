"""``gwi data``: prepare, synthesise, augment, pseudo-label, merge, move, verify and describe datasets."""

from __future__ import annotations

import json

from ..console import dataset_summary, print_problems, table
from ..errors import GwiError
from ..physics import AUGMENT_OPS, BACKENDS, DEFAULT_BACKEND


def cmd_data_prep(a) -> int:
    from ..data.prep import prep_test, prep_train
    from ..sharding import parse_shard
    from ..store import default_store_url

    out = a.out or default_store_url()
    if bool(a.src) == bool(a.test_dir):
        raise GwiError("data prep: give exactly one of --src DIR (training data) or --test-dir DIR")
    if a.src:
        m = prep_train(a.src, out, a.name, shard_size=a.shard_size, overwrite=a.overwrite,
                       time_decimate=a.time_decimate, velocity_tolerance=a.velocity_tolerance,
                       shard=parse_shard(a.shard), exist_ok=a.exist_ok)
    else:
        m = prep_test(a.test_dir, out, a.name, shard_size=a.shard_size, overwrite=a.overwrite,
                      time_decimate=a.time_decimate, shard=parse_shard(a.shard), exist_ok=a.exist_ok)
    _written(m, out, a)
    return 0


def _written(m: dict, out: str, a) -> None:
    """What a command that writes a dataset (or, with --shard, one part of it) prints."""
    from ..sharding import parse_shard

    where = out.rstrip("/") + f"/datasets/{a.name}"
    if a.shard:
        n = parse_shard(a.shard)[1]
        print(f"part {a.shard} of {where}: {m['num_samples']} samples; when all {n} parts are there: "
              f"gwi data merge --out {out} --name {a.name} --parts {n}")
    else:
        print(dataset_summary(m, where))


def cmd_data_synth(a) -> int:
    from ..data.synth import synthesize
    from ..store import default_store_url

    out = a.out or default_store_url()
    families = [f for item in a.family for f in item.split(",") if f]
    m = synthesize(families, a.samples, out, a.name, seed=a.seed, batch_size=a.batch_size, device=a.device,
                   shard_size=a.shard_size, overwrite=a.overwrite, exist_ok=a.exist_ok, backend=a.backend)
    print(dataset_summary(m, out.rstrip("/") + f"/datasets/{a.name}"))
    return 0


def cmd_data_augment(a) -> int:
    from ..data.augment import augment, parse_recipe
    from ..sharding import parse_shard
    from ..store import default_store_url

    out = a.out or default_store_url()
    m = augment(a.source, out, a.name, factor=a.factor, recipe=parse_recipe(a.recipe), seed=a.seed,
                backend=a.backend, keep_source=a.keep_source, shard=parse_shard(a.shard), batch_size=a.batch_size,
                device=a.device, shard_size=a.shard_size, overwrite=a.overwrite, exist_ok=a.exist_ok)
    _written(m, out, a)
    return 0


def cmd_data_merge(a) -> int:
    from ..data.shards import merge_parts
    from ..store import default_store_url

    out = a.out or default_store_url()
    m = merge_parts(out, a.name, a.parts, overwrite=a.overwrite)
    print(dataset_summary(m, out.rstrip("/") + f"/datasets/{a.name}"))
    return 0


def cmd_data_pull(a) -> int:
    from ..data.sync import pull

    print(pull(a.url, a.dest, workers=a.workers))
    return 0


def cmd_data_push(a) -> int:
    from ..data.sync import push

    m = push(a.src, a.to, workers=a.workers)
    print(f"pushed {m['name']}: {len(m['shards'])} shards to {a.to}")
    return 0


def cmd_data_verify(a) -> int:
    from ..data.sync import verify

    m, problems = verify(a.url, workers=a.workers)
    if problems:
        return print_problems(f"{len(problems)} of {len(m['shards'])} shards FAILED verification:", problems)
    print(f"ok: {len(m['shards'])} shards of {m['name']} match their sha256")
    return 0


def cmd_data_info(a) -> int:
    from ..data.shards import load_manifest
    from ..store import open_store

    m = load_manifest(open_store(a.url))
    if a.json:
        print(json.dumps(m, indent=1))
    else:
        print(dataset_summary(m, a.url))
    return 0


def cmd_data_folds(a) -> int:
    from ..data import folds
    from ..data.shards import load_manifest
    from ..store import open_store

    m = load_manifest(open_store(a.url))
    fams = folds.sample_families(m)
    names = sorted(set(fams.tolist()))
    rows = []
    if a.family:
        tr, va = folds.leave_family_out(m, a.family)
        rows.append([f"hold out {a.family}", len(tr), len(va)])
        print(table(rows, ["split", "train", "val"]))
        return 0
    for i in range(a.k):
        tr, va = folds.kfold(m, a.k, i, a.seed)
        rows.append([f"kfold:{a.k}:{i}", len(tr), len(va)] + [int((fams[va] == f).sum()) for f in names])
    print(table(rows, ["split", "train", "val"] + [f"val {f}" for f in names]))
    return 0


def _store_args(q, out_help: str) -> None:
    q.add_argument("--out", metavar="STORE_URL", help=out_help + " (default: the embedded store in gwi's home; gwi status names it)")
    q.add_argument("--name", required=True, help="dataset name: written to STORE_URL/datasets/NAME/")
    q.add_argument("--shard-size", type=int, default=500, help="samples per shard (default 500)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")


def _simulation_args(q, exists: str) -> None:
    """What the commands that forward-model maps into a dataset share."""
    q.add_argument("--batch-size", type=int, default=16, help="velocity maps per forward-model call")
    q.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    q.add_argument("--exist-ok", action="store_true", dest="exist_ok", help=f"succeed without work if {exists}")
    _store_args(q, "store to write to")


def cmd_data_pseudo(a) -> int:
    from ..data.pseudo import pseudo
    from ..sharding import parse_shard
    from ..store import default_store_url

    out = a.out or default_store_url()
    m = pseudo(a.predictions, a.test, out, a.name, backend=a.backend, flip=a.flip, shard=parse_shard(a.shard),
               batch_size=a.batch_size, device=a.device, shard_size=a.shard_size, overwrite=a.overwrite,
               exist_ok=a.exist_ok)
    skipped = m["source"].get("skipped") or {}
    if skipped:
        print(f"skipped {len(skipped)} map(s), not written (the manifest's source.skipped lists them all):")
        for oid, why in list(skipped.items())[:20]:
            print(f"  {oid}: {why}")
        if len(skipped) > 20:
            print(f"  ... and {len(skipped) - 20} more")
    _written(m, out, a)
    return 0


def add_data_pseudo(dsub) -> None:
    q = dsub.add_parser("pseudo", help="a labelled dataset from predictions of the test set (pseudo-labels), "
                                       "re-simulated")
    q.add_argument("--predictions", required=True, metavar="CSV_OR_RUN",
                   help="a submission CSV (path or store URL), or a predict run (its submission.csv)")
    q.add_argument("--test", required=True, metavar="DIR_OR_URL",
                   help="the test data predicted: a folder of <oid>.npy or a prepared test dataset (recorded in the "
                        "manifest; every file needs a map)")
    q.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                   help="forward model: openfwi (the organisers' scheme, default) or deepwave (faster on CPU)")
    q.add_argument("--flip", action="store_true",
                   help="also add each map mirrored (receivers and the order of the sources reversed)")
    q.add_argument("--shard", metavar="i/N", help="only the i-th of N interleaved shares of the maps, "
                                                   "written as part i of N (gwi data merge joins them)")
    _simulation_args(q, "the dataset (or part) exists from the same command and CSV")
    q.set_defaults(fn=cmd_data_pseudo)


def add_data(sub) -> None:
    data = sub.add_parser("data", help="prepare, synthesise, move and check datasets")
    dsub = data.add_subparsers(dest="data_cmd", metavar="SUBCOMMAND")
    dsub.required = True

    q = dsub.add_parser("prep", help="Kaggle/OpenFWI folders -> float16 shards + manifest")
    q.add_argument("--src", metavar="DIR", help="competition root, train_samples/, or one family folder")
    q.add_argument("--test-dir", metavar="DIR", help="a folder of test/<oid>.npy files")
    _store_args(q, "store to write to: file://PATH or s3://BUCKET/PREFIX")
    q.add_argument("--time-decimate", type=int, default=1, metavar="K",
                   help="keep every K-th time sample after a zero-phase anti-alias low-pass")
    q.add_argument("--velocity-tolerance", type=float, default=1.0, metavar="M_S",
                   help="allowed excursion outside 1500-4500 m/s (default 1)")
    q.add_argument("--shard", metavar="i/N", help="only the i-th of N interleaved shares of the source files, "
                                                   "written as part i of N (gwi data merge joins them)")
    q.add_argument("--exist-ok", action="store_true", dest="exist_ok",
                   help="succeed without work if the dataset (or the part) exists, made from the same files")
    q.set_defaults(fn=cmd_data_prep)

    q = dsub.add_parser("synth", help="generate OpenFWI-style families and forward-model them")
    q.add_argument("--family", action="append", required=True,
                   help="family (repeat or comma-separate): FlatVel_A ... Style_B")
    q.add_argument("--samples", type=int, required=True, help="samples per family")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                   help="forward model: openfwi (the organisers' scheme, default) or deepwave (faster on CPU)")
    _simulation_args(q, "the dataset exists with the same families, samples and seed")
    q.set_defaults(fn=cmd_data_synth)

    q = dsub.add_parser("augment", help="new maps from a dataset's maps (flip, crop, affine, blend), re-simulated")
    q.add_argument("--from", dest="source", required=True, metavar="URL", help="a labelled dataset: STORE_URL/datasets/NAME")
    q.add_argument("--factor", type=int, default=10, help="new maps per source map (default 10)")
    q.add_argument("--recipe", help=f"operations, comma-separated (default all: {','.join(AUGMENT_OPS)})")
    q.add_argument("--keep-source", action="store_true", help="also copy the source samples into the new dataset")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--backend", choices=BACKENDS, help="forward model (default: the one that made the source)")
    q.add_argument("--shard", metavar="i/N", help="only the i-th of N interleaved shares of the source maps, "
                                                   "written as part i of N (gwi data merge joins them)")
    _simulation_args(q, "the dataset (or part) exists from the same command")
    q.set_defaults(fn=cmd_data_augment)

    add_data_pseudo(dsub)

    q = dsub.add_parser("merge", help="join the parts of 'gwi data prep|augment|pseudo --shard i/N' into the "
                                      "dataset")
    q.add_argument("--parts", type=int, required=True, metavar="N", help="how many parts (the N of --shard i/N)")
    q.add_argument("--name", required=True, help="dataset name")
    q.add_argument("--out", help="store holding it (default: the embedded store)")
    q.add_argument("--overwrite", action="store_true", help="replace a dataset of that name made otherwise")
    q.set_defaults(fn=cmd_data_merge)

    q = dsub.add_parser("pull", help="download a dataset into the local cache, verifying every shard")
    q.add_argument("url", help="STORE_URL/datasets/NAME")
    q.add_argument("--dest", help="folder to pull into (default: $GWI_CACHE/datasets/...)")
    q.add_argument("--workers", type=int, default=4)
    q.set_defaults(fn=cmd_data_pull)

    q = dsub.add_parser("push", help="copy a dataset (local folder or URL) to a store")
    q.add_argument("src", help="local dataset folder or STORE_URL/datasets/NAME")
    q.add_argument("--to", required=True, metavar="URL", help="destination STORE_URL/datasets/NAME")
    q.add_argument("--workers", type=int, default=4)
    q.set_defaults(fn=cmd_data_push)

    q = dsub.add_parser("verify", help="re-hash every shard where it is stored and report mismatches")
    q.add_argument("url")
    q.add_argument("--workers", type=int, default=4)
    q.set_defaults(fn=cmd_data_verify)

    q = dsub.add_parser("info", help="summarise a dataset's manifest")
    q.add_argument("url")
    q.add_argument("--json", action="store_true", help="print the whole manifest")
    q.set_defaults(fn=cmd_data_info)

    q = dsub.add_parser("folds", help="show the validation splits of a dataset")
    q.add_argument("url")
    q.add_argument("--k", type=int, default=5)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--family", help="leave this family out instead of K-fold")
    q.set_defaults(fn=cmd_data_folds)


COMMANDS = {"data": add_data}

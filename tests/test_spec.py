"""Job specs: every error names file:line, job, field and the allowed values; valid specs become
exact gwi command lines in dependency order."""

from __future__ import annotations

import hashlib
import json
import socket
import textwrap
import time
from pathlib import Path

import pytest

from gwi.adapters.base import load_profiles
from gwi.data.layout import FAMILIES
from gwi.models import registry
from gwi.spec import Job, Limits, Resources, load_spec
from gwi.yamlfile import ConfigError

PLATFORMS = {"colab": "T4", "kaggle": "P100", "lambda": "A100", "local": None}  # and the GPU each has


@pytest.fixture
def profiles(tmp_path):
    d = tmp_path / "platforms"
    d.mkdir()
    for name, gpu in PLATFORMS.items():
        (d / f"{name}.yaml").write_text(f"adapter: {name}\ngpus: 1\n" + (f"gpu: {gpu}\n" if gpu else ""))
    return load_profiles([d])


@pytest.fixture
def spec(tmp_path, profiles):
    """Write ``text`` as jobs/<name>.yaml and load it; returns (path, Spec)."""

    def make(text: str, name: str = "day2", check_store: bool = False):
        p = tmp_path / "jobs" / f"{name}.yaml"
        p.parent.mkdir(exist_ok=True)
        p.write_text(textwrap.dedent(text).lstrip("\n"))
        return p, load_spec(p, profiles=profiles, check_store=check_store)

    return make


@pytest.fixture
def error(tmp_path, profiles):
    """Write ``text``, load it, and return (path, the ConfigError's message)."""

    def make(text: str, name: str = "day2", check_store: bool = False):
        p = tmp_path / "jobs" / f"{name}.yaml"
        p.parent.mkdir(exist_ok=True)
        p.write_text(textwrap.dedent(text).lstrip("\n"))
        with pytest.raises(ConfigError) as e:
            load_spec(p, profiles=profiles, check_store=check_store)
        return p, str(e.value)

    return make


TRAIN = """
name: day2
store: s3://bucket/gwi
jobs:
  - name: egnn
    kind: train
    model: egnn
    dataset: kaggle-train-f16
    platforms: [lambda, local]
"""


# ------------------------------------------------------------------------------------------------
# errors


def test_unknown_top_level_key(error):
    p, msg = error("name: x\njobz: []\n")
    assert msg == (f"{p}:2: field 'jobz': unknown field (did you mean 'jobs'?); "
                   "expected one of: deadline, defaults, jobs, name, store")


def test_unknown_job_key_suggests_the_right_one(error):
    p, msg = error(TRAIN.replace("model: egnn", "modle: egnn"))
    assert msg == (f"{p}:6: job 'egnn': field 'modle': unknown field (did you mean 'model'?); expected one of: "
                   "after, config, dataset, datasets, heartbeat_s, init_from, kind, limits, model, name, platforms, preset, priority, "
                   "resources")


def test_unknown_limits_and_defaults_keys(error):
    p, msg = error(TRAIN + "    limits: {max_hour: 3}\n")
    assert msg == (f"{p}:9: job 'egnn': field 'limits.max_hour': unknown field (did you mean 'max_hours'?); "
                   "expected one of: max_cost_usd, max_hours, retries, stall_s, start_timeout_s")
    p, msg = error("defaults: {resources: {gpu_count: 1}}\njobs: []\n")
    assert msg == (f"{p}:1: defaults: field 'resources.gpu_count': unknown field; "
                   "expected one of: cpus, gpu, gpus, memory_gb")


def test_wrong_types(error):
    p, msg = error("""
        jobs:
          - {name: data, kind: synth, backend: deepwave, dataset: d, families: [FlatVel_A], samples: many, platforms: [local]}
        """)
    assert msg == f"{p}:2: job 'data': field 'samples': expected an integer, got a string ('many')"
    p, msg = error(TRAIN + "    limits: {stall_s: -1}\n")
    assert msg == f"{p}:9: job 'egnn': field 'limits.stall_s': expected a value > 0, got -1"
    p, msg = error(TRAIN + "    heartbeat_s: 30\n    limits: {stall_s: 30}\n")
    assert msg == (f"{p}:10: job 'egnn': field 'limits.stall_s': expected more than heartbeat_s (30), got 30: "
                   "every attempt would be declared lost between two heartbeats")
    p, msg = error(TRAIN + "    config: {epochs: 1.5}\n")
    assert msg == f"{p}:9: job 'egnn': field 'config.epochs': expected an integer, got a number (1.5)"
    p, msg = error(TRAIN + "    resources: [1]\n")
    assert msg == f"{p}:9: job 'egnn': field 'resources': expected a mapping, got a list ([1])"


def test_missing_required_field(error):
    p, msg = error("""
        jobs:
          - name: data
            kind: synth
            dataset: d
            families: [FlatVel_A]
            platforms: [local]
        """)
    assert msg == f"{p}:2: job 'data': field 'samples': required field is missing"
    p, msg = error(TRAIN.replace("    platforms: [lambda, local]\n", ""))
    assert msg == f"{p}:4: job 'egnn': field 'platforms': required field is missing"


def test_unknown_kind(error):
    p, msg = error(TRAIN.replace("kind: train", "kind: trian"))
    assert msg == (f"{p}:5: job 'egnn': field 'kind': unknown value 'trian' (did you mean 'train'?); "
                   "expected one of: augment, cycle, ensemble, evaluate, predict, prep, pseudo, refine, run, sweep, synth, train")


def test_unknown_model_and_preset(error):
    p, msg = error(TRAIN.replace("model: egnn", "model: egn"))
    assert msg == (f"{p}:6: job 'egnn': field 'model': unknown value 'egn' (did you mean 'egnn'?); "
                   f"expected one of: {', '.join(sorted(registry.list_models()))}")
    p, msg = error(TRAIN + "    preset: tinny\n")
    presets = ", ".join(sorted(registry.model_card("egnn").presets))
    assert msg == (f"{p}:9: job 'egnn': field 'preset': unknown value 'tinny' (did you mean 'tiny'?) for model "
                   f"'egnn'; expected one of: {presets}")


def test_unknown_platform(error):
    p, msg = error(TRAIN.replace("[lambda, local]", "[lamda, local]"))
    assert msg == (f"{p}:8: job 'egnn': field 'platforms': unknown value 'lamda' (did you mean 'lambda'?); "
                   "expected one of: colab, kaggle, lambda, local")


def test_unknown_family(error):
    p, msg = error("""
        jobs:
          - name: data
            kind: synth
            dataset: d
            families: [FlatVel_A, CurveFalt_B]
            samples: 4
            platforms: [local]
        """)
    assert msg == (f"{p}:5: job 'data': field 'families': unknown value 'CurveFalt_B' (did you mean "
                   f"'CurveFault_B'?); expected one of: {', '.join(sorted(FAMILIES))}")


def test_unknown_train_config_key(error):
    from gwi.config import TrainConfig

    p, msg = error(TRAIN + "    config:\n      epochs: 3\n      batchsize: 8\n")
    allowed = sorted([f for f in TrainConfig.field_names() if f not in ("model", "dataset", "datasets", "run", "preset",
                                                                         "heartbeat_s", "init_from")]
                     + ["fold", "folds", "k"])
    assert msg == (f"{p}:11: job 'egnn': field 'config.batchsize': unknown field (did you mean 'batch_size'?); "
                   f"expected one of: {', '.join(allowed)}")
    p, msg = error(TRAIN + "    config: {heartbeat_s: 5}\n")
    assert msg == (f"{p}:9: job 'egnn': field 'config.heartbeat_s': "
                   "set heartbeat_s on the job (or in defaults), not in config")


def test_bad_config_value_is_reported_at_its_line(error):
    p, msg = error(TRAIN + "    config:\n      epochs: 3\n      lr: -1\n")
    assert msg == f"{p}:11: job 'egnn': field 'config.lr': expected a positive number, got -1.0"
    # a bad default names the job it breaks and the line in defaults
    p, msg = error("defaults:\n  precision: fp16\n  config: {loss: l3}\n" + TRAIN.replace("name: day2\n", ""))
    assert msg == f"{p}:3: job 'egnn': field 'config.loss': expected one of l1, l1+l2, l2, smooth_l1, got 'l3'"
    p, msg = error(TRAIN + "    config: {split: 'kfold:5:7'}\n")
    assert msg == (f"{p}:9: job 'egnn': field 'config.split': "
                   "expected 'kfold:K:FOLD' with K >= 2 and 0 <= FOLD < K, got 'kfold:5:7'")


TUNE = """  - name: tune
    kind: train
    model: egnn
    init_from: egnn
    dataset: kaggle-train-f16
    config: {time_budget: auto, init_partial: true}
    platforms: [local]
"""


def test_fine_tuning_and_time_budgets_in_a_plan(spec):
    _, s = spec(TRAIN + "    config: {time_budget: 2h30m}\n" + TUNE)
    egnn, tune = s.job("egnn"), s.job("tune")
    assert egnn.params["config"]["time_budget"] == 9000 and "time_budget=9000.0" in egnn.argv
    assert tune.after == ["egnn"] and "time_budget=auto" in tune.argv
    i = tune.argv.index("--init-from")
    assert tune.argv[i + 1] == egnn.outputs["run"] and "init_partial=true" in tune.argv


def test_fine_tuning_and_time_budget_errors(error):
    p, msg = error(TRAIN + TUNE.replace("init_from: egnn", "init_from: egn"))
    assert msg == (f"{p}:12: job 'tune': field 'init_from': unknown job 'egn' (did you mean 'egnn'?); "
                   "expected one of: egnn, tune, or a run URL or a .pt file URL")
    p, msg = error(TRAIN + TUNE.replace("time_budget: auto", "time_budget: 3 parsecs"))
    assert msg == (f"{p}:14: job 'tune': field 'config.time_budget': "
                   "expected a duration like 90s, 45m, 1.5h or 2h30m, got '3 parsecs'")
    p, msg = error(TRAIN + TUNE.replace("    init_from: egnn\n", ""))
    assert msg == f"{p}:13: job 'tune': field 'config.init_partial': init_partial needs init_from on the job " \
                  "(a train job or a run URL)"
    p, msg = error(TRAIN + "    config: {init_from: 's3://b/runs/x'}\n")
    assert msg == f"{p}:9: job 'egnn': field 'config.init_from': set init_from on the job, not in config"


def test_after_names_a_missing_job(error):
    p, msg = error(TRAIN + "    after: [dat]\n" + """
  - {name: data, kind: synth, backend: deepwave, dataset: d, families: [FlatVel_A], samples: 2, platforms: [local]}
""")
    assert msg == (f"{p}:9: job 'egnn': field 'after': unknown job 'dat' (did you mean 'data'?); "
                   "expected one of: data, egnn")


def test_cycle(error):
    p, msg = error("""
        defaults: {platforms: [local]}
        jobs:
          - {name: a, kind: synth, backend: deepwave, dataset: d1, families: [FlatVel_A], samples: 1, after: [c]}
          - {name: b, kind: synth, backend: deepwave, dataset: d2, families: [FlatVel_A], samples: 1, after: [a]}
          - {name: c, kind: synth, backend: deepwave, dataset: d3, families: [FlatVel_A], samples: 1, after: [b]}
          - {name: d, kind: synth, backend: deepwave, dataset: d4, families: [FlatVel_A], samples: 1, after: [d]}
        """)
    assert msg == f"{p}:3: job 'a': field 'after': cycle: a -> c -> b -> a"
    p, msg = error("""
        defaults: {platforms: [local]}
        jobs:
          - {name: d, kind: synth, backend: deepwave, dataset: d4, families: [FlatVel_A], samples: 1, after: [d]}
        """)
    assert msg == f"{p}:3: job 'd': field 'after': cycle: d -> d"


def test_duplicate_job_names(error):
    p, msg = error(TRAIN + """
  - name: egnn
    kind: train
    model: inversionnet
    dataset: d
    platforms: [local]
""")
    assert msg == f"{p}:10: job 'egnn': field 'name': duplicate job name 'egnn' (also at line 4)"


def test_member_must_be_a_train_job(error):
    p, msg = error(TRAIN + """
  - {name: data, kind: synth, backend: deepwave, dataset: d, families: [FlatVel_A], samples: 2, platforms: [local]}
  - {name: ens, kind: ensemble, members: [egnn, data], dataset: d, platforms: [local]}
""")
    assert msg == (f"{p}:11: job 'ens': field 'members': job 'data' is a synth job, not a train job; "
                   "expected one of: egnn, or a run URL")
    p, msg = error(TRAIN + "  - {name: p, kind: predict, ensemble: egnn, test: t, platforms: [local]}\n")
    assert msg == (f"{p}:9: job 'p': field 'ensemble': job 'egnn' is a train job, not an ensemble job; "
                   "expected one of: an ensemble.json URL (this spec has no ensemble jobs)")


def test_predict_needs_exactly_one_of_members_and_ensemble(error):
    p, msg = error(TRAIN + "  - {name: p, kind: predict, members: [egnn], ensemble: s3://b/e.json, test: t, "
                           "platforms: [local]}\n")
    assert msg == f"{p}:9: job 'p': field 'ensemble': give members or ensemble, not both"
    p, msg = error(TRAIN + "  - {name: p, kind: predict, test: t, platforms: [local]}\n")
    assert msg == (f"{p}:9: job 'p': field 'members': required field is missing: give members (train jobs or run "
                   "URLs) or ensemble (an ensemble job or an ensemble.json URL)")


def test_split_and_fold_together(error):
    p, msg = error(TRAIN + "    config:\n      split: family:Style_A\n      fold: 1\n")
    assert msg == f"{p}:11: job 'egnn': field 'config.fold': give split, or fold/folds, not both"


def test_invalid_yaml(error):
    p, msg = error("name: x\njobs: [a\n")
    assert msg == f"{p}:3: invalid YAML: expected ',' or ']', but got '<stream end>'"


def test_unreachable_store_is_reported_quickly(error, monkeypatch):
    import gwi.store

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setattr(gwi.store, "_CLIENTS", {})
    t0 = time.monotonic()
    p, msg = error(TRAIN, check_store=True)
    assert msg == (f"{p}:2: field 'store': cannot reach s3://bucket/gwi: list s3://bucket/gwi/datasets: "
                   f"cannot reach the S3 endpoint http://127.0.0.1:{port}")
    assert time.monotonic() - t0 < 5


def test_spec_job_lookup_lists_names(spec):
    p, s = spec(TRAIN)
    assert s.job("egnn").kind == "train"
    with pytest.raises(ConfigError) as e:
        s.job("egn")
    assert str(e.value) == f"{p}: no job 'egn' in spec 'day2' (did you mean 'egnn'?); expected one of: egnn"


# ------------------------------------------------------------------------------------------------
# valid specs

ALL = """
name: day2
store: s3://bucket/gwi/
defaults:
  dataset: kaggle-train-f16
  precision: bf16
  heartbeat_s: 10
  platforms: [kaggle, local]
  limits: {max_hours: 11, retries: 1}
  resources: {gpus: 1, gpu: P100}
  config: {batch_size: 64, fold: 0, folds: 4}
jobs:
  - name: submission
    kind: predict
    ensemble: ens
    test: ../kaggle/test
    config: {tta: flip, precision: fp16, batch_size: 8, mc_samples: 4}
    uncertainty: true
    plots: true
  - name: data
    kind: synth
    dataset: synth-b
    families: [FlatVel_B, CurveFault_A]
    samples: 500
    seed: 1
  - name: unet
    kind: train
    model: specproj_unet
    preset: tiny
    config: {epochs: 40, lr: 3e-4, ema: 1.0e-05, model_args: {dropout: 0.1}}  # 3e-4: a number, as in YAML 1.2
    limits: {max_cost_usd: 0}
  - name: egnn
    kind: train
    model: egnn
    dataset: synth-b
    platforms: [lambda, local]
    heartbeat_s: 30
    resources: {gpu: A100, cpus: 8}
    limits: {max_hours: 24, max_cost_usd: 60, stall_s: 600, start_timeout_s: 900}
    config: {split: 'family:Style_A', precision: fp32, loss: l1+l2}
  - name: ens
    kind: ensemble
    members: [unet, egnn, s3://other/runs/x]
    config: {split: 'kfold:4:0', crf: false, mc_samples: 0}
"""


def test_argv_of_every_kind(spec, tmp_path):
    p, s = spec(ALL)
    st = "s3://bucket/gwi"
    runs = f"{st}/runs/day2"
    assert s.store == st
    assert s.job("data").argv == ["gwi", "data", "synth", "--out", st, "--name", "synth-b", "--family",
                                  "FlatVel_B,CurveFault_A", "--samples", "500", "--seed", "1", "--backend",
                                  "openfwi", "--exist-ok"]
    assert s.job("data").outputs == {"dataset": f"{st}/datasets/synth-b"}
    assert s.job("unet").argv == [
        "gwi", "train", "--model", "specproj_unet", "--preset", "tiny", "--dataset", f"{st}/datasets/kaggle-train-f16",
        "--run", f"{runs}/unet", "--set", "model.dropout=0.1", "--set", "epochs=40", "--set", "batch_size=64",
        "--set", "lr=0.0003", "--set", "ema=1.0e-05", "--set", "precision=bf16", "--set", "split=kfold:4:0",
        "--set", "heartbeat_s=10.0"]
    assert s.job("unet").outputs == {"run": f"{runs}/unet"}
    assert s.job("egnn").argv == [
        "gwi", "train", "--model", "egnn", "--preset", "default", "--dataset", f"{st}/datasets/synth-b",
        "--run", f"{runs}/egnn", "--set", "batch_size=64", "--set", "loss=l1+l2", "--set", "precision=fp32",
        "--set", "split=family:Style_A", "--set", "heartbeat_s=30.0"]
    assert s.job("ens").argv == [
        "gwi", "ensemble", "fit", "--member", f"{runs}/unet", "--member", f"{runs}/egnn", "--member",
        "s3://other/runs/x", "--dataset", f"{st}/datasets/kaggle-train-f16", "--out", f"{runs}/ens/ensemble.json",
        "--split", "kfold:4:0", "--no-crf", "--mc-samples", "0", "--plots", f"{runs}/ens/plots"]
    assert s.job("ens").outputs == {"ensemble": f"{runs}/ens/ensemble.json", "plots": f"{runs}/ens/plots"}
    test_dir = str(tmp_path / "kaggle" / "test")  # relative to the spec's folder, jobs/
    assert s.job("submission").argv == [
        "gwi", "predict", "--ensemble", f"{runs}/ens/ensemble.json", "--test", test_dir,
        "--out", f"{runs}/submission/submission.csv", "--tta", "flip", "--precision", "fp16", "--batch-size", "8",
        "--mc-samples", "4", "--uncertainty", f"{runs}/submission/uncertainty.npy", "--plots",
        f"{runs}/submission/plots"]
    assert s.job("submission").outputs == {"submission": f"{runs}/submission/submission.csv",
                                           "uncertainty": f"{runs}/submission/uncertainty.npy",
                                           "plots": f"{runs}/submission/plots"}


def test_train_argv_parses_back_to_the_config(spec):
    from gwi.config import TrainConfig, apply_sets

    _, s = spec(ALL)
    argv = s.job("unet").argv
    cfg = apply_sets(TrainConfig(model="specproj_unet", dataset="d", run="r", preset="tiny"),
                     [argv[i + 1] for i, a in enumerate(argv) if a == "--set"])
    assert (cfg.epochs, cfg.lr, cfg.ema, cfg.batch_size, cfg.precision, cfg.split, cfg.heartbeat_s, cfg.model_args) \
        == (40, 3e-4, 1e-5, 64, "bf16", "kfold:4:0", 10.0, {"dropout": 0.1})


def test_defaults_merge(spec):
    _, s = spec(ALL)
    unet, egnn, ens = s.job("unet"), s.job("egnn"), s.job("ens")
    assert unet.platforms == ["kaggle", "local"] and egnn.platforms == ["lambda", "local"]
    assert unet.heartbeat_s == 10.0 and egnn.heartbeat_s == 30.0
    assert unet.limits == Limits(max_hours=11.0, max_cost_usd=0.0, retries=1, stall_s=60.0, start_timeout_s=None)
    assert egnn.limits == Limits(max_hours=24.0, max_cost_usd=60.0, retries=1, stall_s=600.0, start_timeout_s=900.0)
    assert unet.resources == Resources(gpus=1, gpu="P100", cpus=None, memory_gb=None)
    assert egnn.resources == Resources(gpus=1, gpu="A100", cpus=8, memory_gb=None)
    # defaults' config is training config: train jobs take it key by key, with their own split winning
    assert unet.params["config"] == {"precision": "bf16", "batch_size": 64, "epochs": 40, "lr": 3e-4, "ema": 1e-5,
                                     "model_args": {"dropout": 0.1}, "split": "kfold:4:0"}
    assert egnn.params["config"] == {"precision": "fp32", "batch_size": 64, "split": "family:Style_A", "loss": "l1+l2"}
    assert ens.params["config"] == {"split": "kfold:4:0", "crf": False, "mc_samples": 0}
    assert s.job("data").params == {"dataset": "s3://bucket/gwi/datasets/synth-b",
                                    "families": ["FlatVel_B", "CurveFault_A"], "samples": 500, "seed": 1,
                                    "backend": "openfwi"}


def test_implicit_after_and_topological_order(spec):
    _, s = spec(ALL)
    assert s.job("egnn").after == ["data"]  # reads the dataset the synth job writes
    assert s.job("unet").after == []
    assert s.job("ens").after == ["unet", "egnn"]
    assert s.job("submission").after == ["ens"]
    # dependencies first, otherwise the file's order
    assert [j.name for j in s.jobs] == ["data", "unet", "egnn", "ens", "submission"]


def test_topological_order_is_stable(spec):
    _, s = spec("""
        defaults: {platforms: [local]}
        jobs:
          - {name: late, kind: synth, backend: deepwave, dataset: a, families: [FlatVel_A], samples: 1, after: [first]}
          - {name: free1, kind: synth, backend: deepwave, dataset: b, families: [FlatVel_A], samples: 1}
          - {name: first, kind: synth, backend: deepwave, dataset: c, families: [FlatVel_A], samples: 1, after: [free1]}
          - {name: free2, kind: synth, backend: deepwave, dataset: d, families: [FlatVel_A], samples: 1}
        """)
    assert [j.name for j in s.jobs] == ["free1", "first", "late", "free2"]


def test_folds_list_expands_into_one_job_per_fold(spec):
    _, s = spec("""
        store: s3://b
        defaults: {platforms: [local], config: {fold: 1}}
        jobs:
          - name: data
            kind: synth
            dataset: d
            families: [FlatVel_A]
            samples: 8
          - name: inv
            kind: train
            model: inversionnet
            dataset: d
            config: {folds: [0, 2], k: 3, epochs: 2}
          - name: report
            kind: synth
            dataset: r
            families: [Style_A]
            samples: 1
            after: [inv]
          - name: ens
            kind: predict
            members: [inv]
            test: s3://b/datasets/d
        """)
    assert [j.name for j in s.jobs] == ["data", "inv-f0", "inv-f2", "report", "ens"]
    f0, f2 = s.job("inv-f0"), s.job("inv-f2")
    assert f0.params["config"] == {"epochs": 2, "split": "kfold:3:0"}  # the default fold: 1 gave way
    assert f2.params["config"] == {"epochs": 2, "split": "kfold:3:2"}
    assert f2.argv[-4:] == ["--set", "split=kfold:3:2", "--set", "heartbeat_s=20.0"]
    assert f2.outputs == {"run": "s3://b/runs/day2/inv-f2"} and f0.line == f2.line == 9
    assert f0.after == f2.after == ["data"]
    assert s.job("report").after == ["inv-f0", "inv-f2"]
    assert s.job("ens").after == ["inv-f0", "inv-f2", "data"]  # the test URL is the synth job's dataset
    assert s.job("ens").argv[2:6] == ["--checkpoint", "s3://b/runs/day2/inv-f0",
                                      "--checkpoint", "s3://b/runs/day2/inv-f2"]


def test_fold_with_int_folds(spec):
    _, s = spec(TRAIN + "    config: {fold: 2, folds: 3}\n")
    assert s.job("egnn").params["config"] == {"split": "kfold:3:2"}


def test_round_trip_through_json(spec):
    _, s = spec(ALL)
    for job in s.jobs:
        d = json.loads(json.dumps(job.to_dict()))
        back = Job.from_dict(d)
        assert back == job and back.to_dict() == d


def test_relative_file_store_becomes_absolute_and_is_created(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, s = spec(TRAIN.replace("s3://bucket/gwi", "file://./here/store/"), check_store=True)
    assert s.store == f"file://{tmp_path.resolve()}/here/store"
    assert (tmp_path / "here" / "store").is_dir()
    assert s.job("egnn").outputs == {"run": f"file://{tmp_path.resolve()}/here/store/runs/day2/egnn"}


def test_default_name_store_and_sha256(spec, tmp_path):
    p, s = spec(TRAIN.replace("name: day2\nstore: s3://bucket/gwi\n", ""), name="night-1", check_store=True)
    assert s.name == "night-1" and s.path == str(p)
    assert s.store == f"file://{(tmp_path / 'gwi-home' / 'store').resolve()}"  # conftest's GWI_HOME
    assert s.sha256 == hashlib.sha256(Path(p).read_bytes()).hexdigest()


def test_whether_the_plan_set_stall_s_is_remembered(spec):
    """The pulse keeps the 6 x heartbeat_s default; only a stall_s the plan sets also bounds progress."""
    from gwi.spec import Job

    _, s = spec(ALL)
    unet, egnn = s.job("unet"), s.job("egnn")
    assert unet.limits.stall_s == 60.0 and not unet.limits.stall_set and unet.limits.progress_stall_s is None
    assert egnn.limits.stall_set and egnn.limits.progress_stall_s == 600.0
    assert Job.from_dict(egnn.to_dict()).limits.progress_stall_s == 600.0  # as the scheduler stores it
    old = egnn.to_dict()
    del old["limits"]["stall_set"]  # recorded by an earlier gwi
    assert Job.from_dict(old).limits.progress_stall_s is None


def test_deadline_and_priorities(spec, error):
    _, s = spec("deadline: 2099-01-01T00:00:00Z\ndefaults: {priority: 2}\n" + TRAIN.replace("name: day2\n", "")
                + "    priority: 7\n" + TUNE)
    assert s.deadline == 4070908800.0 and s.job("egnn").priority == 7 and s.job("tune").priority == 2
    p, msg = error("deadline: 2020-01-01T00:00:00Z\n" + TRAIN.replace("name: day2\n", ""))
    assert msg.startswith(f"{p}:1: field 'deadline': 2020-01-01T00:00:00+00:00 is in the past (now 20")
    p, msg = error("deadline: 'next friday'\n" + TRAIN.replace("name: day2\n", ""))
    assert msg == f"{p}:1: field 'deadline': expected an ISO time with a zone like 2026-12-09T18:00:00Z, got 'next friday'"
    p, msg = error("deadline: '2099-01-01T00:00:00'\n" + TRAIN.replace("name: day2\n", ""))
    assert "expected an ISO time with a zone (Z or +01:00)" in msg
    p, msg = error(TRAIN + "    priority: high\n")
    assert msg == f"{p}:9: job 'egnn': field 'priority': expected an integer, got a string ('high')"


REFINE = """
    jobs:
      - name: sub
        kind: predict
        members: [s3://b/runs/x/m]
        test: t
        platforms: [local]
      - name: fix
        kind: refine
        init: sub
        test: t
        worst: 0.5
        shards: 3
        platforms: [local]
    """


def test_refine_shards_become_jobs_and_a_merge(spec, error):
    p, msg = error(REFINE)
    assert msg == (f"{p}:7: job 'fix': field 'rank': job 'sub' writes no misfit file (submission); expected a job "
                   "that does, or a misfit.csv URL (gwi predict --misfit)")
    _, s = spec(REFINE.replace("test: t\n        platforms", "test: t\n        misfit: true\n        platforms"))
    jobs = {j.name: j for j in s.jobs}
    assert [j.name for j in s.jobs] == ["sub", "fix-s1", "fix-s2", "fix-s3", "fix"]
    assert jobs["fix-s2"].after == ["sub"] and jobs["fix"].after == ["sub", "fix-s1", "fix-s2", "fix-s3"]
    argv = jobs["fix-s2"].argv
    assert argv[argv.index("--shard") + 1] == "2/3" and argv[argv.index("--worst") + 1] == "0.5"
    assert argv[argv.index("--rank") + 1].endswith("/runs/day2/sub/misfit.csv")
    assert jobs["fix"].argv[:2] == ["gwi", "merge"] and jobs["fix"].argv.count("--base") == 1
    p, msg = error(REFINE.replace("worst: 0.5", "worst: 1.5"))
    assert msg == f"{p}:11: job 'fix': field 'worst': expected a fraction in (0, 1] of the files to refine, got 1.5"


AUGMENT = """
    jobs:
      - name: data
        kind: synth
        dataset: base
        families: [FlatVel_A]
        samples: 8
        platforms: [local]
      - name: more
        kind: augment
        from: base
        dataset: base-aug
        factor: 4
        recipe: [crop, flip]
        shards: 2
        platforms: [local]
      - name: fit
        kind: train
        model: inversionnet
        dataset: base-aug
        platforms: [local]
    """


def test_augment_shards_become_jobs_and_a_merge_that_training_waits_for(spec, error):
    _, s = spec(AUGMENT)
    jobs = {j.name: j for j in s.jobs}
    assert [j.name for j in s.jobs] == ["data", "more-s1", "more-s2", "more", "fit"]
    assert jobs["more-s1"].after == ["data"] and jobs["more"].after == ["data", "more-s1", "more-s2"]
    assert jobs["fit"].after == ["more"]
    argv = jobs["more-s2"].argv
    assert argv[:3] == ["gwi", "data", "augment"] and argv[argv.index("--shard") + 1] == "2/2"
    assert argv[argv.index("--recipe") + 1] == "flip,crop" and argv[argv.index("--from") + 1].endswith("/datasets/base")
    assert jobs["more-s2"].outputs == {"part": jobs["more"].outputs["dataset"] + "/parts/2-of-2.json"}
    assert jobs["more"].argv[:3] == ["gwi", "data", "merge"] and jobs["more"].argv[-2:] == ["--parts", "2"]
    p, msg = error(AUGMENT.replace("recipe: [crop, flip]", "recipe: [crop, rotate]"))
    assert msg == (f"{p}:13: job 'more': field 'recipe': unknown value 'rotate'; "
                   "expected one of: affine, blend, crop, flip")
    p, msg = error(AUGMENT.replace("dataset: base-aug\n        factor", "dataset: base\n        factor"))
    assert msg == f"{p}:11: job 'more': field 'dataset': expected a new dataset, got the source 'base' itself"


def test_a_job_no_platform_can_run_is_a_plan_error_and_one_that_fits_is_placed_there(tmp_path):
    from gwi.adapters.base import parse_profile

    plat = tmp_path / "platforms"
    plat.mkdir()
    # colab's adapter: what the profile says (the local one would add what this machine has)
    (plat / "t4.yaml").write_text("adapter: colab\ngpu: T4\ngpus: 2\nmemory_gb: 29\n")
    (plat / "cpu.yaml").write_text("adapter: colab\ngpus: 0\ncpus: 2\nmemory_gb: 8\n")
    profiles = {p.stem: parse_profile(p) for p in plat.glob("*.yaml")}
    plan = tmp_path / "p.yaml"
    plan.write_text(f"name: p\nstore: file://{tmp_path}/s\njobs:\n"
                    "  - {name: big, kind: synth, dataset: d, families: [FlatVel_A], samples: 1, platforms: [cpu, t4],\n"
                    "     resources: {gpus: 4}}\n")
    with pytest.raises(ConfigError) as e:
        load_spec(plan, profiles=profiles)
    assert str(e.value) == (f"{plan}:5: job 'big': field 'resources': no platform of this job has what it asks for: "
                            "cpu: needs 4 GPUs, has no GPU, 2 CPUs, 8 GB; t4: needs 4 GPUs, has 2x T4, 29 GB")
    plan.write_text(plan.read_text().replace("gpus: 4", "gpus: 1, memory_gb: 16"))
    job = load_spec(plan, profiles=profiles).jobs[0]
    assert job.resources.gpus == 1 and job.resources.memory_gb == 16


# ------------------------------------------------------------------------------------------------
# hostile input (issue 27): alias bombs, huge documents, huge values in messages

BOMB = """
a: &a [x, x, x, x, x, x, x, x, x, x]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
name: day2
store: s3://bucket/gwi
jobs:
  - name: j
"""


@pytest.mark.parametrize("field", ["argv: *g", "after: *g", "config: {families: *g}",
                                   "config: {model_args: {depth: *g}}"])
def test_a_plan_of_nested_aliases_is_refused_at_once(error, field):
    kind = "kind: run\n    platforms: [local]\n" if field.startswith(("argv", "after")) else \
        "kind: train\n    model: egnn\n    dataset: d\n    platforms: [local]\n"
    text = BOMB + f"    {kind}    {field}\n"
    assert len(text) < 1000
    t0 = time.monotonic()
    _, msg = error(text)
    assert time.monotonic() - t0 < 5
    assert msg.endswith("day2.yaml: expands to more than 100,000 values (aliases of aliases?); write the values out "
                        "or use fewer aliases")


def test_aliases_within_the_bound_still_load(spec):
    _, s = spec(TRAIN.replace("platforms: [lambda, local]", "platforms: &plats [lambda, local]")
                + "  - {name: unet, kind: train, model: specproj_unet, dataset: kaggle-train-f16, platforms: *plats}\n")
    assert s.job("unet").platforms == s.job("egnn").platforms == ["lambda", "local"]


def test_a_huge_plan_is_refused_by_its_size(error, monkeypatch):
    import gwi.yamlfile

    monkeypatch.setattr(gwi.yamlfile, "MAX_BYTES", 2000)
    _, msg = error(TRAIN + "# " + "x" * 3000 + "\n")
    assert "day2.yaml: 3," in msg and "characters; a plan or profile is at most 2,000" in msg


def test_error_messages_cut_long_values(error):
    _, msg = error(f"name: day2\nstore: s3://bucket/gwi\njobs:\n  - {{name: r, kind: run, platforms: [local], "
                   f"argv: [python, {{script: '{'x' * 5000}'}}]}}\n")
    assert "field 'argv': expected a command as a list of strings" in msg and len(msg) < 400, msg
    assert msg.endswith(" characters)") and "…" in msg

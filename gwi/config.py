"""The settings of ``gwi train``: one dataclass, checked without torch.

``gwi train --set KEY=VALUE``, a plan's train ``config:`` and the training loop all read
:class:`TrainConfig`, so a plan is checked (``gwi dispatch --dry-run``) without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from .models import registry
from .yamlfile import quote

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ENV_CACHE_LIMIT = "GWI_CACHE_LIMIT"  # a platform profile's cache_limit, set by the scheduler for its jobs
LOSSES = ("l1", "l1+l2", "l2", "smooth_l1")
OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "constant")


@dataclass
class TrainConfig:
    model: str
    dataset: str
    run: str
    preset: str = "default"
    model_args: dict = field(default_factory=dict)  # overrides of the preset, from --set model.KEY=VALUE
    epochs: int = 10
    # seconds; when set, the schedule is sized to end (final validation and checkpoint included) inside
    # it, measured from the process start, and epochs no longer bound the run. inf ("auto"): the
    # attempt's time limit (GWI_TIME_LIMIT_S, set by the scheduler) less a margin; capped by it anyway
    time_budget: float = 0.0
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_frac: float = 0.05
    grad_clip: float = 1.0
    # the recipe that won the competition, on by default: EMA weights for validation, checkpoints and
    # prediction (the decay warms up, so short runs are not stuck near the initial weights), and the
    # flip of the geometry (map mirrored, receivers and the order of the five sources reversed)
    ema: float = 0.999  # EMA decay per step; 0 disables
    flip: float = 0.5  # probability a training sample is flipped; 0 disables
    loss: str = "l1"  # the metric is MAE
    optimizer: str = "adamw"  # muon: torch's Muon for 2-D weight matrices, AdamW for the rest
    schedule: str = "cosine"  # warm-up then cosine decay; constant: warm-up then flat (OpenFWI's recipe)
    families: list = field(default_factory=list)  # train and validate on these families only (a specialist)
    init_from: str = ""  # a run URL or .pt file whose weights start this run (fine-tuning)
    init_partial: bool = False  # with init_from: load the tensors that match, skip the rest
    precision: str = "auto"
    split: str = "kfold:5:0"
    seed: int = 0
    heartbeat_s: float = 20.0
    checkpoint_every: int = 0  # steps; 0 = at the end of every epoch
    keep_checkpoints: int = 3
    max_steps: int = 0  # stop early (smoke runs, benchmarks); 0 = run all epochs
    val_every: int = 1  # epochs
    device: str = ""
    workers: int = -1  # DataLoader worker processes; -1: several on a GPU, none on a CPU
    compile: bool = False  # torch.compile the model
    channels_last: bool = False  # NHWC memory format (faster convolutions on tensor cores)
    log_every: int = 10  # steps between reads of the loss on the host (each read waits for the device)
    fault_at_step: int = 0  # testing: raise after this step's checkpoint, as a dying platform would
    # audits and tests: append a line per step ("epoch step sample...", samples numbered as the run's
    # datasets one after the other) to this local file (FILE.RANK for ranks above 0)
    sample_log: str = ""
    # stream datasets larger than this from their store through a bounded local cache (gwi.data.cache)
    # instead of pulling it whole: a size like 40GB; "" takes GWI_CACHE_LIMIT (a platform profile's
    # cache_limit), else most of the free disk; "none" pulls whatever the size
    cache_limit: str = ""
    stream_window: int = 4  # shards whose samples are shuffled together when streaming
    # more datasets mixed into each epoch, "URL[:WEIGHT]" as dataset (gwi.data.mix): WEIGHT x each one's
    # training samples per epoch (default 1)
    datasets: list = field(default_factory=list)
    val_dataset: str = ""  # the dataset whose split validates (its URL or name); "": the first

    def parts(self) -> list[tuple[str, float]]:
        """(url, weight) of each dataset of the run, the first being ``dataset``."""
        from .data.mix import parse_part

        return [parse_part(t) for t in [self.dataset, *self.datasets]]

    def validate(self) -> None:
        def need(cond, name, expected, got):
            if not cond:
                raise ValueError(f"{name}: expected {expected}, got {quote(got)}")

        registry.model_args(self.model, self.preset, self.model_args)  # unknown model/preset errors
        need(isinstance(self.epochs, int) and self.epochs >= 1, "epochs", "an integer >= 1", self.epochs)
        need(isinstance(self.time_budget, (int, float)) and not isinstance(self.time_budget, bool)
             and self.time_budget >= 0, "time_budget", "a duration like 90s, 45m or 2h30m (0: none)", self.time_budget)
        need(isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
        need(isinstance(self.lr, (int, float)) and self.lr > 0, "lr", "a positive number", self.lr)
        need(0 <= self.warmup_frac < 1, "warmup_frac", "a number in [0, 1)", self.warmup_frac)
        need(0 <= self.ema < 1, "ema", "a decay in [0, 1) (0 disables)", self.ema)
        need(0 <= self.flip <= 1, "flip", "a probability in [0, 1]", self.flip)
        need(self.loss in LOSSES, "loss", f"one of {', '.join(LOSSES)}", self.loss)
        need(self.optimizer in OPTIMIZERS, "optimizer", f"one of {', '.join(OPTIMIZERS)}", self.optimizer)
        need(self.schedule in SCHEDULES, "schedule", f"one of {', '.join(SCHEDULES)}", self.schedule)
        need(isinstance(self.families, list) and all(isinstance(f, str) and f for f in self.families),
             "families", "a list of family names", self.families)
        need(isinstance(self.init_from, str), "init_from", "a run URL or .pt file", self.init_from)
        need(not self.init_partial or self.init_from, "init_partial", "init_from to be set", self.init_partial)
        need(isinstance(self.workers, int) and self.workers >= -1, "workers", "an integer >= 0 (-1: auto)",
             self.workers)
        need(isinstance(self.log_every, int) and self.log_every >= 1, "log_every", "an integer >= 1",
             self.log_every)
        need(self.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}", self.precision)
        if self.cache_limit and self.cache_limit.strip().lower() not in ("auto", "none"):
            from .data.cache import parse_size

            parse_size(self.cache_limit)  # "cache limit: expected a size like 40GB ..., got ..."
        need(isinstance(self.datasets, list) and all(isinstance(t, str) for t in self.datasets), "datasets",
             "a list of URL[:WEIGHT]", self.datasets)
        urls = [u for u, _ in self.parts()]  # "dataset X: expected a weight above 0 ..., got ..."
        twice = next((u for i, u in enumerate(urls) if u in urls[:i]), None)
        need(twice is None, "datasets", "each dataset once (give one weight)", twice)
        names = {u.rstrip("/").rsplit("/", 1)[-1] for u in urls} | set(urls)
        need(not self.val_dataset or self.val_dataset in names, "val_dataset",
             f"one of the run's datasets ({', '.join(urls)})", self.val_dataset)
        need(isinstance(self.stream_window, int) and self.stream_window >= 1, "stream_window", "an integer >= 1",
             self.stream_window)
        need(self.heartbeat_s > 0, "heartbeat_s", "a positive number of seconds", self.heartbeat_s)
        need(isinstance(self.keep_checkpoints, int) and self.keep_checkpoints >= 1, "keep_checkpoints",
             "an integer >= 1", self.keep_checkpoints)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def apply_sets(cfg: TrainConfig, sets: list[str]) -> TrainConfig:
    """``--set key=value`` (YAML values): config fields, or ``model.KEY`` for model arguments."""
    from .yamlfile import ConfigError, loads

    for item in sets or []:
        if "=" not in item:
            raise ValueError(f"--set: expected KEY=VALUE, got {quote(item)}")
        key, raw = item.split("=", 1)
        try:
            val = loads(raw, f"--set {key}")
        except ConfigError as e:
            raise ValueError(f"{e} (value {quote(raw)})") from None
        if key.startswith("model."):
            cfg.model_args[key[len("model."):]] = val
        elif key == "time_budget":
            from .budget import parse_duration

            try:
                cfg.time_budget = parse_duration(val, allow_auto=True)
            except ValueError as e:
                raise ValueError(f"--set time_budget: {e}") from None
        elif key in TrainConfig.field_names() and key not in ("model", "dataset", "run"):
            cur = getattr(cfg, key)
            if isinstance(cur, float) and isinstance(val, int):
                val = float(val)
            if isinstance(cur, list) and isinstance(val, str):
                val = [v.strip() for v in val.split(",") if v.strip()]  # families=A,B
            if cur is not None and not isinstance(val, type(cur)):
                raise ValueError(f"--set {key}: expected {type(cur).__name__}, got {quote(val)}")
            setattr(cfg, key, val)
        else:
            allowed = [n for n in TrainConfig.field_names() if n not in ("model", "dataset", "run")]
            raise ValueError(f"--set: unknown key {quote(key)}; expected model.ARG or one of {', '.join(allowed)}")
    return cfg

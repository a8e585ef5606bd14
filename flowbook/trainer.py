"""The dataset-free trainer of the DLGM rows (Algorithm 1), with exact resumption, and the base of every
experiment's configuration (:class:`TrainConfig`).

The trainer knows no dataset: an experiment is a subclass of :class:`TrainConfig` that owns its data, its
names and its evaluation, binarized MNIST's Table 2 (:class:`flowbook.train.MnistConfig`) and CIFAR-10's
Table 3 (:class:`flowbook.cifar.CifarConfig`) side by side.

Protocol fields (the paper's §6.2 in full mode): the optimizer (RMSprop with learning rate 1e-5 and
momentum 0.9 in the paper), minibatches, the number of updates, and the annealed free energy of eq. 15
with β_t = min(1, β_start + t/warm-up) multiplying ln p(x, z_K); each experiment's presets fill them in.

Random numbers. Every random number of a run comes from two sources owned by the trainer: the data
order, a fresh permutation per epoch drawn from a generator seeded by ``(seed, epoch)`` (so it needs no
state), and the noise ε of the reparameterization, one ``torch.Generator`` on the run's device whose
state is checkpointed. All rows of a :class:`~flowbook.models.MultiDLGM` see the same minibatch and
the same ε (common random numbers: differences between rows are due to the flows, not to luck).

Checkpoints hold the parameters, the optimizer state, the noise generator's state, the update count
and the training log, written atomically every ``ckpt_every`` updates and when a time budget
(``max_minutes``) runs out. A run that is killed (even with ``kill -9``) and started again with the
same command resumes from its last checkpoint and ends with the same parameters, bit for bit on the
CPU, as a run that never stopped. A checkpoint that cannot be read (e.g. truncated by a full disk) or
that holds another configuration is refused with a :class:`~flowbook.checkpoints.CheckpointError` naming
the file; ``restart`` (``--restart`` on the command line) deletes it and starts over. The checkpoint files,
and the results a finished run writes, are the dataset-neutral runner's (:mod:`flowbook.checkpoints`,
:mod:`flowbook.runner`).
"""
from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator

import torch
from torch import Tensor

from .data.minibatches import batches
from .data.files import file_sha256
from .checkpoints import RESTART_HINT, CheckpointError, first_line, open_checkpoint, save_atomic
from .evaluation import point_bounds, summarize
from .flows import check_run_options, options_for
from .models import DLGM, DLGMConfig, MultiDLGM
from .objectives import beta_schedule
from .loop import run_updates
from .runid import config_digest, run_name

__all__ = ["TrainConfig", "parse_rows", "build_model", "make_optimizer", "train", "evaluate", "Run",
           "validation_free_energy", "Averager", "stage_chain", "start_from_weights"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a run's result (it is stored in every checkpoint and result), for any
    dataset: the rows, the model's and the protocol's fields.

    An experiment subclasses it as its configuration of the runner (:class:`flowbook.runid.RunConfig`): it
    sets :attr:`dataset` and gives the data (:meth:`training_data`, :meth:`validation_data`,
    :meth:`test_data`, :meth:`data_record`) and the evaluation (:meth:`row_metrics`); the names of its
    results and checkpoints follow :attr:`dataset` (:meth:`result_name`, :meth:`checkpoint_stem`). Methods
    and class variables are not fields, so they never change :meth:`digest`."""
    #: the first word of the experiment's result, weights and checkpoint names, e.g. ``mnist``
    dataset: ClassVar[str] = ""

    rows: tuple[tuple[str, int], ...] = (("planar", 0),)
    mode: str = "fast"
    updates: int = 2000
    batch_size: int = 100
    optimizer: str = "adam"  # "rmsprop" (the paper) or "adam" (fast mode: see FAST)
    lr: float = 1e-3
    momentum: float = 0.9  # RMSprop's momentum; Adam's β1 is torch's default 0.9
    rms_alpha: float = 0.99  # RMSprop's moving-average constant (torch's default; the paper gives none)
    beta_start: float = 0.01
    beta_warmup: float = 500  # β_t = min(1, beta_start + t/beta_warmup)
    seed: int = 0
    hidden: int = 400
    maxout_units: str = "pre_activations"
    likelihood: str = "bernoulli"
    dtype: str = "float32"
    lr_final: float | None = None  # cosine decay from lr to lr_final over the updates (None: constant)
    valid_every: int = 0  # updates between validation checks; the best-validation parameters are kept (0: off)
    valid_points: int = 2000  # validation points of each check (one ε per point, the same ε at every check)
    eval_points: int = 1000  # test points evaluated (10 000 = the whole test set)
    eval_samples: int = 100  # S of the importance-sampled ln p(x) (5000 in the paper)
    label: str = ""  # e.g. "dry run": appears in the result's name and config
    # A continuation stage (stored mode): the run starts from committed weights instead of a random
    # initialization, e.g. Table 2's 120 000-update row continued for 120 000 more (label updates240k).
    init_from: str = ""  # the weights file it starts from, relative to the repository (empty: from scratch)
    init_sha256: str = ""  # that file's sha256, so the chain of stages is pinned by content
    updates_before: int = 0  # updates of the earlier stages of the chain (the row's total is this + updates)
    warmup: int = 0  # linear warm-up of the rate over the first updates (a fresh optimizer's moments start at 0)
    ema_decay: float = 0.0  # > 0: validate and keep an exponential moving average of the parameters
    fused: bool = False  # Adam's whole step in one kernel (the same arithmetic; benchmarks/update_speed.py)
    # the flow types' own options (flowbook.flows.options_of), sorted (name, value) pairs; each row gets
    # those its flow type has, and each option must be one of some row's
    flow_options: tuple[tuple[str, Any], ...] = ()  # flowbook.flows.as_options

    def __post_init__(self) -> None:
        try:  # each option must be some row's (DLGMConfig checks each row's own)
            options = check_run_options([f for f, _ in self.rows], self.flow_options) if self.flow_options else ()
        except ValueError as err:
            raise ValueError(f"{type(self).__name__}: {err}") from None
        object.__setattr__(self, "flow_options", options)

    def model_configs(self) -> list[DLGMConfig]:
        """One :class:`~flowbook.models.DLGMConfig` per row: its flow and K with :meth:`model_fields` and
        the flow type's own options (:func:`flowbook.flows.options_for`)."""
        return [DLGMConfig(flow=f, K=k, flow_options=options_for(f, self.flow_options), **self.model_fields())
                for f, k in self.rows]

    def model_fields(self) -> dict[str, Any]:
        """The :class:`~flowbook.models.DLGMConfig` fields this configuration sets for every row."""
        return {"hidden": self.hidden, "maxout_units": self.maxout_units, "likelihood": self.likelihood,
                "seed": self.seed}

    def digest(self) -> str:
        """A short hash of what training depends on: a checkpoint resumes only the run it belongs to
        (the evaluation settings are left out, so a trained run can be evaluated again differently)."""
        return config_digest(asdict(self))

    @staticmethod
    def trained_config(result_config: dict) -> dict:
        """The training config in a result's ``config`` (:func:`flowbook.runner.finish` stores it as ``train``)."""
        return result_config["train"]

    def result_name(self, flow: str, K: int) -> str:
        """The result (and weights) name of one row (:func:`flowbook.runid.run_name`), e.g.
        ``mnist_full_planar_K80`` (K = 0: ``mnist_full_diagonal``)."""
        return run_name(self.dataset, flow, K, self.mode, self.label)

    def checkpoint_stem(self) -> str:
        """``<dataset>_<mode>[_<label>]_<rows>``, e.g. ``mnist_stored_planar80`` (``diagonal`` for K = 0):
        the checkpoint's name before its digest (:func:`flowbook.checkpoints.checkpoint_path`)."""
        return self._rows_stem(self.dataset)

    def training_data(self) -> Tensor:
        """The experiment's training data, (N, D)."""
        raise NotImplementedError(f"{type(self).__name__} names no training data: train with x_train, or use an "
                                  "experiment's config (flowbook.train.MnistConfig, flowbook.cifar.CifarConfig)")

    def validation_data(self) -> Tensor:
        """The experiment's first ``valid_points`` validation points."""
        raise NotImplementedError(f"{type(self).__name__} names no validation data: train with x_valid, or use an "
                                  "experiment's config (flowbook.train.MnistConfig, flowbook.cifar.CifarConfig)")

    def test_data(self) -> Tensor:
        """The experiment's first ``eval_points`` test points."""
        raise NotImplementedError(f"{type(self).__name__} names no test data: use an experiment's config "
                                  "(flowbook.train.MnistConfig, flowbook.cifar.CifarConfig)")

    def data_record(self) -> dict[str, Any]:
        """What a result records of the experiment's data."""
        raise NotImplementedError(f"{type(self).__name__} records no data: use an experiment's config")

    def row_metrics(self, row: DLGM, x_test: Tensor, progress: bool | None = None) -> dict[str, Any]:
        """The experiment's numbers of one trained row on ``x_test``."""
        raise NotImplementedError(f"{type(self).__name__} has no evaluation: use an experiment's config")

    def _rows_stem(self, prefix: str) -> str:
        rows = "-".join("diagonal" if k == 0 else f"{f}{k}" for f, k in self.rows)
        label = f"_{self.label.replace(' ', '-')}" if self.label else ""
        return f"{prefix}_{self.mode}{label}_{rows}"

    def lr_at(self, t: int) -> float:
        """The learning rate of update t: a linear warm-up over the first ``warmup`` updates, then constant
        or a cosine decay from ``lr`` to ``lr_final`` over the remaining updates."""
        if t < self.warmup:
            return self.lr * (t + 1) / self.warmup
        if self.lr_final is None:
            return self.lr
        span = max(1, self.updates - self.warmup)
        frac = min(t - self.warmup, span) / span
        return self.lr_final + 0.5 * (self.lr - self.lr_final) * (1 + math.cos(math.pi * frac))

def parse_rows(spec: str) -> tuple[tuple[str, int], ...]:
    """``"planar:0,planar:10,nice:10"`` → ((flow, K), ...). K = 0 means the diagonal Gaussian."""
    rows = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        flow, sep, k = item.partition(":")
        if not sep or not k.strip().isdigit():
            raise ValueError(f"row {item!r} is not FLOW:K, e.g. planar:10 (rows are comma separated)")
        rows.append((flow.strip(), int(k)))
    if not rows:
        raise ValueError(f"no rows in {spec!r}; give e.g. --rows planar:0,planar:10")
    return tuple(rows)


def build_model(cfg: TrainConfig) -> DLGM | MultiDLGM:
    """One row: a :class:`~flowbook.models.DLGM`; several rows: a :class:`~flowbook.models.MultiDLGM`
    (stacked, trained together)."""
    configs = cfg.model_configs()
    return DLGM(configs[0]) if len(configs) == 1 else MultiDLGM(configs)


def _epoch_order_generator(seed: int, epoch: int) -> torch.Generator:
    # stateless data order: epoch e's permutation depends only on (seed, e), so resuming needs only t
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def _batch_for_update(x: Tensor, t: int, cfg: TrainConfig, cache: dict) -> Tensor:
    """The minibatch of update t (0-based): batch t mod n of epoch t // n, n = ⌊N/B⌋."""
    per_epoch = x.shape[0] // cfg.batch_size
    epoch, i = divmod(t, per_epoch)
    if cache.get("epoch") != epoch:
        cache["epoch"] = epoch
        cache["batches"] = batches(x, cfg.batch_size, _epoch_order_generator(cfg.seed, epoch))
        cache["next"] = 0
    # advance the epoch's iterator to batch i (only after a resume does this skip batches)
    while cache["next"] < i:
        next(cache["batches"])
        cache["next"] += 1
    cache["next"] += 1
    return next(cache["batches"])


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """RMSprop (the paper's, §6.2) or Adam (fast mode). Both act elementwise, so stacking rows in one
    tensor (:class:`~flowbook.models.MultiDLGM`) gives every row the update it would get alone."""
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, alpha=cfg.rms_alpha, momentum=cfg.momentum)
    if cfg.optimizer == "adam":
        # on a CPU torch's default Adam loops over the parameter tensors, a few small kernels each
        return torch.optim.Adam(params, lr=cfg.lr, fused=cfg.fused)
    raise ValueError(f"optimizer must be 'rmsprop' or 'adam', got {cfg.optimizer!r}")


@dataclass
class Run:
    """A finished (or paused) run: the model, its training log and where it stopped.

    ``best`` (one entry per row, when ``config.valid_every`` is set): the update, the validation free
    energy and the parameters of the row's best validation check so far (early stopping).
    """
    config: TrainConfig
    model: DLGM | MultiDLGM
    step: int
    log: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    resumed_from: int | None = None
    valid_log: list[dict[str, Any]] = field(default_factory=list)
    best: list[dict[str, Any] | None] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.step >= self.config.updates

    def final_rows(self) -> list[DLGM]:
        """The rows to evaluate: each row's best-validation parameters when validation ran, else the last."""
        rows = self.model.rows()
        for r, row in enumerate(rows):
            if r < len(self.best) and self.best[r] is not None:
                row.load_state_dict(self.best[r]["state"])
        return rows


def stage_chain(cfg: TrainConfig) -> list[dict[str, Any]]:
    """The stages a continued row went through, oldest first: for each, the weights it started from (path
    and sha256) and the updates the row had then; empty for a run from scratch."""
    from .results import REPO_ROOT, load_result

    if not cfg.init_from:
        return []
    before = load_result(REPO_ROOT / "data" / "results" / f"{Path(cfg.init_from).stem}.json")
    return [*before["config"].get("chain", []),
            {"weights": cfg.init_from, "sha256": cfg.init_sha256, "updates": cfg.updates_before}]


def start_from_weights(model: DLGM | MultiDLGM, cfg: TrainConfig) -> None:
    """Load the weights a continuation stage starts from (``cfg.init_from``) into ``model``, after checking
    that the file is the one the config names (its sha256) and holds this row (its model config)."""
    from . import pretrained
    from .results import REPO_ROOT

    if len(cfg.rows) != 1:
        raise ValueError(f"a continuation stage trains one row, got rows {cfg.rows}")
    path = Path(cfg.init_from)
    path = path if path.is_absolute() else REPO_ROOT / path
    found = file_sha256(path) if path.is_file() else "no file"
    if found != cfg.init_sha256:
        raise ValueError(f"{path}: the stage starts from weights with sha256 {cfg.init_sha256}, found {found}; "
                         f"restore the file with `git checkout -- {cfg.init_from}`")
    start = pretrained.load_file(path)
    if start.config != model.config:
        raise ValueError(f"{path} holds the row {start.config.to_dict()}, not {model.config.to_dict()}")
    model.load_state_dict(start.state_dict())


class Averager:
    """An exponential moving average of a model's parameters, θ̄ ← θ̄ + (1 − decay)(θ − θ̄) after each
    update (Polyak averaging): the average wanders less than the last iterate of a noisy gradient method,
    so it is what validation checks and what the run keeps when ``TrainConfig.ema_decay`` is set."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.params = [p for p in model.parameters()]
        self.avg = [p.detach().clone() for p in self.params]
        self.decay = decay

    @torch.no_grad()
    def update(self) -> None:
        for a, p in zip(self.avg, self.params):
            a.lerp_(p, 1.0 - self.decay)

    def state(self) -> list[Tensor]:
        return self.avg

    @torch.no_grad()
    def load(self, avg: list[Tensor]) -> None:
        for a, b in zip(self.avg, avg, strict=True):
            a.copy_(b)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The averaged parameters in the model for the duration of the block, the trained ones after."""
        with torch.no_grad():
            kept = [p.detach().clone() for p in self.params]
            for p, a in zip(self.params, self.avg):
                p.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, k in zip(self.params, kept):
                    p.copy_(k)


@torch.no_grad()
def validation_free_energy(model: DLGM | MultiDLGM, x_valid: Tensor, seed: int, batch: int = 500) -> list[float]:
    """Per-row free energy (β = 1, one ε per point from a generator seeded by ``seed``) on ``x_valid``:
    the same draws at every check, so that checks differ only by the parameters."""
    gen = torch.Generator(device=x_valid.device).manual_seed(seed)
    D = model.rows()[0].config.latent if isinstance(model, MultiDLGM) else model.config.latent
    total = None
    for i in range(0, x_valid.shape[0], batch):
        x = x_valid[i:i + batch]
        eps = torch.randn(x.shape[0], D, generator=gen, device=x.device, dtype=x.dtype)
        part = model.loss(x, eps, 1.0).to(torch.float64) * x.shape[0]
        total = part if total is None else total + part
    return (total / x_valid.shape[0]).tolist()


#: What to do about a diverged run (after its message's first sentence).
_DIVERGED = ("This configuration diverges: lower the learning rate (now {lr}) or lengthen the annealing "
             "(--lr, --beta-warmup: a new configuration, with its own checkpoint); --restart deletes this "
             "configuration's checkpoint")


def _planar_impl(cfg: TrainConfig, device: torch.device) -> str | None:
    """Which planar chain the run's planar rows use (the compiled C kernel or the PyTorch loop, which
    give different trajectories: :func:`flowbook.flows.planar_impl`, without its file and reasons); None
    when no row has a planar flow. Recorded in the checkpoint, so that a resume on a machine running the
    other one is refused instead of mixing the two. It is not a field of the config: the digests of the
    stored runs stay what they are."""
    from .flows import planar_impl

    if not any(flow == "planar" and K > 0 for flow, K in cfg.rows):
        return None
    return planar_impl(device, cfg.dtype).split(" (")[0]


def _training_data(cfg: TrainConfig, x_train: Tensor | None, x_valid: Tensor | None, device: torch.device
                   ) -> tuple[Tensor, Tensor | None]:
    """The training data and (when ``cfg.valid_every`` is set) the validation points, on the run's device and
    dtype; the config's own data where none is given."""
    dtype = getattr(torch, cfg.dtype)
    if x_train is None:
        x_train = cfg.training_data()
    x_train = x_train.to(device=device, dtype=dtype)
    if not cfg.valid_every:
        return x_train, None
    if x_valid is None:
        x_valid = cfg.validation_data()
    return x_train, x_valid[:cfg.valid_points].to(device=device, dtype=dtype)


class _Trainer:
    """The state of one :func:`train` call and its steps: set up (or resume) the run, one update, the
    training log, validation and the checkpoint. Everything a resume needs to continue bit for bit is in
    the checkpoint: the model, the optimizer, the noise generator, the average, the log's running sum."""

    def __init__(self, cfg: TrainConfig, device: torch.device, x_train: Tensor, x_valid: Tensor | None,
                 path: Path | None, state: dict[str, Any] | None, *, compile: bool, log_every: int):
        self.cfg, self.device, self.dtype = cfg, device, getattr(torch, cfg.dtype)
        self.x_train, self.x_valid, self.path, self.log_every = x_train, x_valid, path, log_every
        model = build_model(cfg)
        if cfg.init_from and state is None:  # a continuation stage's first call (a resume has its own weights)
            start_from_weights(model, cfg)
        self.model = model.to(device=device, dtype=self.dtype)
        self.opt = make_optimizer(cfg, self.model.parameters())
        # a later stage draws noise its own stream (an earlier stage's seed would replay its first draws)
        self.noise = torch.Generator(device=device).manual_seed(cfg.seed + 1 + cfg.updates_before)
        self.ema = Averager(self.model, cfg.ema_decay) if cfg.ema_decay else None
        R, self.latent = len(cfg.rows), cfg.model_configs()[0].latent
        self.run = Run(cfg, self.model, 0, best=[None] * R)
        # running sum of the per-row free energy since the last log entry (checkpointed with the rest)
        self.acc = torch.zeros(R, device=device, dtype=torch.float64)
        self.acc_n = 0
        self.impl = _planar_impl(cfg, device)
        if state is not None:
            self.resume(state)
        self.loss_fn = torch.compile(self.model.loss) if compile else self.model.loss
        self.batches: dict = {}  # the epoch's batch iterator, for _batch_for_update
        self.bar: Any = None

    def resume(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint: refuse one of the other planar chain or one that does not fit."""
        run, path = self.run, self.path
        if "planar_impl" in state and state["planar_impl"] != self.impl:
            raise CheckpointError(f"checkpoint {path} was trained with the planar chain {state['planar_impl']!r}, "
                                  f"this machine runs {self.impl!r}; they give different trajectories, so resume it "
                                  f"where it was trained, or {RESTART_HINT}")
        try:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optim"])
            self.noise.set_state(state["noise"].cpu())  # generator states are CPU byte tensors on every device
        except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as err:
            raise CheckpointError(f"checkpoint {path} does not fit this model ({first_line(err)}); "
                                  f"{RESTART_HINT}") from err
        run.step, run.log, run.train_seconds = state["step"], state["log"], state["train_seconds"]
        run.valid_log, run.best = state.get("valid_log", []), state.get("best", [None] * len(self.cfg.rows))
        run.resumed_from = run.step
        if self.ema is not None:
            self.ema.load(state["ema"])
        self.acc.copy_(state["log_acc"])
        self.acc_n = state["log_acc_n"]

    @contextlib.contextmanager
    def progress_bar(self, show: bool) -> Iterator[None]:
        """A tqdm bar over the updates (hidden unless ``show``) for the duration of the block."""
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.cfg.updates, initial=self.run.step, disable=not show, desc="train",
                        unit="upd", dynamic_ncols=True)
        try:
            yield
        finally:
            self.bar.close()

    def update(self, t: int) -> None:
        """One update of Algorithm 1 on every row, then the log entry and validation when they are due."""
        cfg, run = self.cfg, self.run
        # the chain's epochs go on across stages
        x = _batch_for_update(self.x_train, cfg.updates_before + run.step, cfg, self.batches)
        eps = torch.randn(x.shape[0], self.latent, generator=self.noise, device=self.device, dtype=self.dtype)
        beta = beta_schedule(run.step, cfg.beta_start, cfg.beta_warmup)
        if cfg.lr_final is not None or cfg.warmup:
            for group in self.opt.param_groups:
                group["lr"] = cfg.lr_at(run.step)
        losses = self.loss_fn(x, eps, beta)
        self.opt.zero_grad(set_to_none=True)
        losses.sum().backward()  # rows are independent: the sum's gradient is each row's own
        self.opt.step()
        if self.ema is not None:
            self.ema.update()
        run.step += 1
        self.acc += losses.detach().to(torch.float64)
        self.acc_n += 1
        if run.step % self.log_every == 0 or run.step == cfg.updates:
            self.log_entry(beta)
        # validation counts only once β = 1 (before, the parameters optimize another objective)
        if cfg.valid_every and (run.step % cfg.valid_every == 0 or run.step == cfg.updates) \
                and beta_schedule(run.step, cfg.beta_start, cfg.beta_warmup) >= 1.0:
            self.validate()
        self.bar.update(1)

    def log_entry(self, beta: float) -> None:
        """Append the per-row mean free energy since the last entry to the log; a NaN or ∞ stops the run."""
        mean = (self.acc / self.acc_n).tolist()
        if not all(math.isfinite(v) for v in mean):
            raise FloatingPointError(f"the free energy became {mean} at update {self.run.step}. "
                                     + _DIVERGED.format(lr=self.cfg.lr))
        self.run.log.append({"step": self.run.step, "beta": beta, "free_energy": mean})
        self.acc.zero_()
        self.acc_n = 0
        self.bar.set_postfix_str(" ".join(f"{v:.1f}" for v in mean))

    def validate(self) -> None:
        """Check every row's validation free energy and keep each row's best parameters (early stopping)."""
        run = self.run
        # with averaging, the averaged parameters are the ones checked and kept
        with self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext():
            values = validation_free_energy(self.model, self.x_valid, self.cfg.seed + 2)
            run.valid_log.append({"step": run.step, "free_energy": values})
            rows = None
            for r, v in enumerate(values):
                if math.isfinite(v) and (run.best[r] is None or v < run.best[r]["free_energy"]):
                    rows = rows or self.model.rows()
                    state = {k: t.detach().clone() for k, t in rows[r].state_dict().items()}
                    run.best[r] = {"step": run.step, "free_energy": v, "state": state}

    def checkpoint(self, done: int, seconds: float) -> None:
        """Record the training time and save everything a resume needs (when the run has a checkpoint)."""
        self.run.train_seconds = seconds
        if self.path is None:
            return
        # never save a diverged state: a resume would start from it and diverge again
        if not (torch.isfinite(self.acc).all() and all(torch.isfinite(p).all() for p in self.model.parameters())):
            raise FloatingPointError(f"the parameters or the free energy became NaN or infinite by update "
                                     f"{self.run.step}; checkpoint {self.path} was not written (any earlier one "
                                     "is intact). " + _DIVERGED.format(lr=self.cfg.lr))
        run, ema = self.run, self.ema
        save_atomic({"config": asdict(self.cfg), "step": run.step, "model": self.model.state_dict(),
                     "optim": self.opt.state_dict(), "noise": self.noise.get_state(), "log": run.log,
                     "log_acc": self.acc, "log_acc_n": self.acc_n, "train_seconds": run.train_seconds,
                     "valid_log": run.valid_log, "best": run.best, "planar_impl": self.impl,
                     **({"ema": ema.state()} if ema is not None else {})}, self.path)


def train(cfg: TrainConfig, *, x_train: Tensor | None = None, x_valid: Tensor | None = None,
          device: str | torch.device = "cpu", ckpt_dir: str | Path | None = None, ckpt_every: int = 1000,
          max_minutes: float | None = None, stop_at: int | None = None, log_every: int = 100,
          progress: bool | None = None, compile: bool = False, restart: bool = False) -> Run:
    """Train ``cfg.rows`` together for ``cfg.updates`` updates (Algorithm 1), resuming from a checkpoint.

    Args:
        x_train: (N, D) training data on any device (default: the config's
            :meth:`~TrainConfig.training_data`, e.g. binarized MNIST's training split).
        x_valid: validation data for ``cfg.valid_every`` (default: the config's
            :meth:`~TrainConfig.validation_data`); the best-validation parameters of every row are kept.
        ckpt_dir: where checkpoints live (created if missing; it must be writable); None disables them.
            An existing checkpoint of the same config is resumed; a damaged one, or one whose stored
            config differs, raises :class:`~flowbook.checkpoints.CheckpointError`. Temporary files of killed saves
            (``*.pt.tmp<pid>`` with a dead pid) are removed.
        ckpt_every: updates between checkpoints.
        max_minutes: stop (after checkpointing) when this much wall time has passed; run again to go on.
        stop_at: stop (after checkpointing) at this update, as if interrupted (for tests and demos).
        log_every: updates between entries of the training log (per-row mean free energy since the
            last entry).
        progress: show a tqdm bar; default: only when stderr is a terminal (never inside notebooks).
        compile: wrap the loss in ``torch.compile`` (worth it on a GPU for long runs; ~1 min to compile).
        restart: delete this configuration's checkpoint (e.g. a damaged one) and start from update 0.
    """
    device = torch.device(device)
    path, state = None, None
    if ckpt_dir is not None:  # before any data loads: a bad directory or checkpoint fails at once
        path, state = open_checkpoint(cfg, ckpt_dir, restart=restart, device=device)
    x_train, x_valid = _training_data(cfg, x_train, x_valid, device)
    trainer = _Trainer(cfg, device, x_train, x_valid, path, state, compile=compile, log_every=log_every)
    end = cfg.updates if stop_at is None else min(stop_at, cfg.updates)
    if progress is None:
        progress = sys.stderr.isatty()
    run = trainer.run
    with trainer.progress_bar(progress):
        _, run.train_seconds = run_updates(run.step, end, trainer.update, trainer.checkpoint, every=ckpt_every,
                                           max_minutes=max_minutes, seconds_before=run.train_seconds)
    return run


@torch.no_grad()
def evaluate(model: DLGM, x_test: Tensor, samples: int, *, batch: int = 100, chunk: int | None = None,
             seed: int = 1234, progress: bool | None = None, per_point: bool = False) -> dict[str, Any]:
    """Test-set −ELBO, importance-sampled −ln p(x) with S = ``samples``, and KL = bound − (−ln p).

    These are the three panels of the paper's Figure 4. Both estimates use the same S draws
    z_s ~ q_K(z | x) per test point: −ELBO ≈ −(1/S) Σ_s ln w_s and −ln p(x) ≈ −ln (1/S) Σ_s w_s with
    w_s = p(x, z_s)/q_K(z_s | x) (:func:`flowbook.objectives.importance_log_marginal`), so KL ≥ 0 holds
    for every point, not only in expectation. Test points go ``batch`` at a time and the samples
    ``chunk`` at a time (default: about 20 000 (sample, point) pairs per chunk). With ``per_point``, the
    result also holds each point's values, ``{"per_point": {"neg_elbo": ..., "neg_log_p": ...}}`` (float64
    tensors), for paired comparisons of models on the same points
    (:func:`flowbook.evaluation.paired_difference`).
    """
    p = next(model.parameters())
    x_test = x_test.to(device=p.device, dtype=p.dtype)
    chunk = chunk or max(1, 20_000 // batch)
    gen = torch.Generator(device=p.device).manual_seed(seed)
    if progress is None:
        progress = sys.stderr.isatty()
    from tqdm.auto import tqdm

    neg_elbo, neg_logp = [], []
    for i in tqdm(range(0, x_test.shape[0], batch), disable=not progress, desc="eval", unit="batch"):
        e, l = point_bounds(model, x_test[i:i + batch], samples, gen, chunk)
        neg_elbo.append(e)
        neg_logp.append(l)
    neg_elbo_t, neg_logp_t = torch.cat(neg_elbo), torch.cat(neg_logp)
    out: dict[str, Any] = summarize(neg_elbo_t, neg_logp_t, samples)
    if per_point:
        out["per_point"] = {"neg_elbo": neg_elbo_t.cpu(), "neg_log_p": neg_logp_t.cpu()}
    return out

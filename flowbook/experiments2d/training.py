"""Training and evaluating the 2-D fits (§6.1, Figure 3): one Adam optimizer on the sum of every fit's
annealed free energy (eq. 15), and the KL of each fit from many fresh samples.

Training resumes exactly: a checkpoint (:class:`Checkpointing`, written by :mod:`flowbook.checkpoints`)
holds every group's parameters, Adam's and the learning-rate schedule's state, the state of the
generator that draws every training sample, the update count and the history, so a run stopped and
resumed ends with the same numbers, bit for bit on the CPU, as a run that never stopped.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flowbook import energies
from flowbook.checkpoints import RESTART_HINT, CheckpointError, first_line, save_atomic
from flowbook.experiments2d.model import FitConfig, FitGroup, build_groups, target_potential
from flowbook.loop import run_updates
from flowbook.objectives import beta_schedule, free_energy

__all__ = ["CHECKPOINT_KEYS", "Checkpointing", "annealed_free_energy", "train", "evaluate", "log_density_grid",
           "run_experiment"]

#: The keys of a 2-D training checkpoint (:func:`flowbook.checkpoints.load_checkpoint` checks them).
CHECKPOINT_KEYS = ("config", "step", "groups", "optim", "sched", "noise", "history", "train_seconds")


@dataclass(frozen=True)
class Checkpointing:
    """Where :func:`train` saves its state (atomically, :func:`flowbook.checkpoints.save_atomic`), every
    ``every`` updates and when it stops: at the last update, at ``stop_at`` (as if interrupted), or once
    ``max_minutes`` of training have passed in this process (the runner's ``--max-minutes``)."""

    path: Path
    every: int = 1000
    max_minutes: float | None = None
    stop_at: int | None = None


def annealed_free_energy(groups: Sequence[FitGroup], potentials: dict[str, Callable[[Tensor], Tensor]], n: int,
                         beta: float, generator: torch.Generator | None = None
                         ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """Σ over every fit of its annealed free energy F_β (eq. 15, :func:`flowbook.objectives.free_energy`
    with ln p = −U), each estimated from n samples.

    Each target's potential is called once, on the samples of all fits of that target. Returns the
    loss and, per group, the samples (z_K, ln q_K(z_K)) it used.
    """
    by_target: dict[str, list[Tensor]] = {}
    drawn = []
    for g in groups:
        z0, log_q0 = g.base_sample(n, generator)
        zK, log_det = g.flow(z0)
        for tg, sl in g.target_slices.items():
            by_target.setdefault(tg, []).append(zK[sl].reshape(-1, 2))
        drawn.append((zK, log_q0, log_det))
    U_parts = {tg: list(potentials[tg](torch.cat(zs)).split([len(z) for z in zs])) for tg, zs in by_target.items()}
    loss: Tensor | float = 0.0
    samples = []
    for g, (zK, log_q0, log_det) in zip(groups, drawn):
        # the group's fits are sorted by target, so its targets' slices in order give U for every fit
        U = torch.cat([U_parts[tg].pop(0) for tg in g.target_slices]).view(zK.shape[:2])
        loss = loss + free_energy(log_q0, log_det, -U, beta, dim=-1).sum()
        samples.append((zK, log_q0 - log_det))
    return loss, samples


def train(groups: Sequence[FitGroup], config: FitConfig, record_every: int = 0,
          log: Callable[[str], None] | None = None,
          after_update: Callable[[int], None] | None = None, *, history: dict[str, Any] | None = None,
          checkpointing: Checkpointing | None = None, resume: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train every fit at once: one Adam optimizer on the sum of the annealed free energies (eq. 15).

    Each update draws ``config.samples`` samples per fit; the potential of each target is called
    once per update on the samples of all fits of that target. The learning rate decays
    geometrically from ``lr`` to ``lr_final``. If ``record_every`` > 0, the history holds, every
    that many updates, each fit's free energy at β = 1 on the training samples and the mean and
    standard deviation of its z_K, as ``history[field][group index][record][fit]``.
    ``after_update(t)`` is called after update t = 1, …, ``config.updates`` (e.g. to evaluate checkpoints).

    Args:
        history: the dict to fill and return (default: a new one); what the caller keeps in it (e.g.
            mid-training evaluations) is checkpointed with it.
        checkpointing: save the state there (see :class:`Checkpointing`); None: no checkpoints.
        resume: a checkpoint's state (:func:`flowbook.checkpoints.load_checkpoint` with
            ``CHECKPOINT_KEYS``) to go on from; its history replaces the contents of ``history``.

    Returns:
        The history, with ``updates_done`` (fewer than ``config.updates`` when it stopped early) and
        ``train_seconds`` (summed over resumed pieces).
    """
    potentials = {t: target_potential(t, config.confine_scale) for g in groups for t in g.target_slices}
    opt, sched, gen = _optimizer(groups, config)
    history = {} if history is None else history
    first, seconds_before = _start(history, groups, opt, sched, gen, resume, checkpointing)
    end = config.updates if checkpointing is None or checkpointing.stop_at is None \
        else min(checkpointing.stop_at, config.updates)
    n = config.samples
    start = time.perf_counter()

    def update(t: int) -> None:
        beta = beta_schedule(t, start=0.01, warmup=config.warmup)
        record = record_every > 0 and t % record_every == 0
        loss, samples = annealed_free_energy(groups, potentials, n, beta, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if record:
            _record(history, t, beta, groups, samples, potentials)
        if after_update is not None:
            after_update(t + 1)
        if log is not None and (t + 1) % max(config.updates // 20, 1) == 0:
            log(f"update {t + 1}/{config.updates}  beta={beta:.3f}  loss={float(loss.detach()):.3f}  "
                f"{time.perf_counter() - start:.0f}s")

    def checkpoint(done: int, seconds: float) -> None:
        save_atomic({"config": asdict(config), "step": done, "groups": [g.state_dict() for g in groups],
                     "optim": opt.state_dict(), "sched": sched.state_dict(), "noise": gen.get_state(),
                     "history": history, "train_seconds": seconds}, checkpointing.path)

    history["updates_done"], history["train_seconds"] = run_updates(
        first, end, update, checkpoint, every=checkpointing.every if checkpointing is not None else None,
        max_minutes=checkpointing.max_minutes if checkpointing is not None else None, seconds_before=seconds_before)
    return history


def _optimizer(groups: Sequence[FitGroup], config: FitConfig
               ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, torch.Generator]:
    """Adam on every fit's parameters, its rate decayed geometrically from ``lr`` to ``lr_final`` over the
    updates, and the generator of the samples (seeded from ``config.seed``)."""
    params = [p for g in groups for p in g.parameters()]
    opt = torch.optim.Adam(params, lr=config.lr)
    decay = (config.lr_final / config.lr) ** (1.0 / max(config.updates - 1, 1))
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=decay)
    return opt, sched, torch.Generator(device=params[0].device).manual_seed(config.seed + 1)


@torch.no_grad()
def _record(history: dict[str, Any], t: int, beta: float, groups: Sequence[FitGroup],
            samples: list[tuple[Tensor, Tensor]], potentials: dict[str, Callable[[Tensor], Tensor]]) -> None:
    """Add update t's record to ``history``: each fit's F at β = 1 and the mean and spread of its z_K."""
    history["step"].append(t)
    history["beta"].append(beta)
    for i, (g, (zK, log_q)) in enumerate(zip(groups, samples)):
        zK, log_q = zK.detach(), log_q.detach()
        U = torch.stack([potentials[tg](zK[f]) for f, (tg, _, _) in enumerate(g.labels)])
        # F of each fit (eq. 15 at β = 1; log_q is already ln q_K, so no log-det is left)
        history["F"][i].append(free_energy(log_q, torch.zeros_like(log_q), -U, dim=-1).tolist())
        history["mean"][i].append(zK.mean(1).tolist())
        history["std"][i].append(zK.std(1).tolist())


def _start(history: dict[str, Any], groups: Sequence[FitGroup], opt: torch.optim.Optimizer,
           sched: torch.optim.lr_scheduler.LRScheduler, gen: torch.Generator, resume: dict[str, Any] | None,
           checkpointing: Checkpointing | None) -> tuple[int, float]:
    """Fill ``history`` for a run from update 0, or restore everything from ``resume``; returns the first
    update and the training time before it."""
    if resume is None:
        history.update({"step": [], "beta": [], "F": [[] for _ in groups], "mean": [[] for _ in groups],
                        "std": [[] for _ in groups]})
        return 0, 0.0
    _restore(resume, groups, opt, sched, gen, checkpointing)
    history.clear()
    history.update(resume["history"])
    return resume["step"], resume["train_seconds"]


def _restore(state: dict[str, Any], groups: Sequence[FitGroup], opt: torch.optim.Optimizer,
             sched: torch.optim.lr_scheduler.LRScheduler, gen: torch.Generator,
             checkpointing: Checkpointing | None) -> None:
    """Load a checkpoint's parameters, optimizer, schedule and generator state into a fresh run."""
    where = f"checkpoint {checkpointing.path}" if checkpointing is not None else "the resumed state"
    try:
        if len(state["groups"]) != len(groups):
            raise ValueError(f"{len(state['groups'])} groups stored, {len(groups)} built")
        for g, group_state in zip(groups, state["groups"]):
            g.load_state_dict(group_state)
        opt.load_state_dict(state["optim"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["noise"].cpu())  # generator states are CPU byte tensors on every device
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as err:
        raise CheckpointError(f"{where} does not fit these fits ({first_line(err)}); {RESTART_HINT}") from err


@torch.no_grad()
def evaluate(groups: Sequence[FitGroup], config: FitConfig, log_Z: dict[str, float],
             chunk: int = 100_000) -> list[dict[str, Any]]:
    """F at β = 1 and KL = F + ln Z for every fit, from ``config.eval_samples`` fresh samples each.

    Returns one row per fit: target, method, K, F, se and (when ln Z of the target is given) KL.
    The standard error se = std(ln q_K + U)/√N applies to F and KL alike (ln Z is exact to < 10⁻⁴).
    """
    gen = torch.Generator(device=groups[0].mean.device).manual_seed(config.seed + 2)
    rows = []
    for g in groups:
        for f, (t, m, K) in enumerate(g.labels):
            U = target_potential(t, config.confine_scale)
            s1 = s2 = 0.0
            done = 0
            while done < config.eval_samples:
                n = min(chunk, config.eval_samples - done)
                zK, log_q = g.sample_fit(f, n, gen)
                v = (log_q + U(zK)).double()
                s1 += float(v.sum())
                s2 += float(v.square().sum())
                done += n
            N = config.eval_samples
            mean = s1 / N
            se = math.sqrt(max(s2 / N - mean * mean, 0.0) / (N - 1))
            row = {"target": t, "method": m, "K": K, "F": mean, "se": se}
            if t in log_Z:
                row["KL"] = energies.kl_from_free_energy(mean, log_Z[t])
            rows.append(row)
    return rows


@torch.no_grad()
def log_density_grid(group: FitGroup, f: int, n: int = 100, box: float = energies.BOX) -> Tensor:
    """ln q_K of fit f on an n×n grid of cell centres over [−box, box]²: (n, n), rows = z2, columns = z1."""
    h = 2.0 * box / n
    x = torch.linspace(-box + h / 2, box - h / 2, n, device=group.mean.device, dtype=group.mean.dtype)
    Z1, Z2 = torch.meshgrid(x, x, indexing="xy")
    return group.log_prob_fit(f, torch.stack([Z1, Z2], -1).reshape(n * n, 2)).reshape(n, n).cpu()


def run_experiment(config: FitConfig, device: torch.device | str = "cpu", record_every: int = 0,
                   log: Callable[[str], None] | None = None, checkpoints: Sequence[int] = (), *,
                   checkpointing: Checkpointing | None = None, resume: dict[str, Any] | None = None
                   ) -> tuple[list[FitGroup], list[dict[str, Any]] | None, dict]:
    """Build, train and evaluate every fit of ``config``; returns (groups, table rows, history).

    For each update count in ``checkpoints`` the fits are also evaluated in the middle of training, as
    ``history["checkpoints"] = [{"update": t, "rows": rows}, …]``: the convergence evidence (a fit
    whose KL no longer changes between a checkpoint and the end has converged under this schedule).
    ``checkpointing`` and ``resume`` are :func:`train`'s; the rows are None when training stopped before
    its last update (``history["updates_done"]`` < ``config.updates``).
    """
    torch.manual_seed(config.seed)
    groups = [g.to(device) for g in build_groups(config)]
    log_Z = {t: energies.log_normalizer(target_potential(t, config.confine_scale)) for t in config.targets}
    history: dict[str, Any] = {"checkpoints": []}

    def evaluate_checkpoint(t: int) -> None:
        if t in checkpoints and t < config.updates:
            history["checkpoints"].append({"update": t, "rows": evaluate(groups, config, log_Z)})

    train(groups, config, record_every=record_every, log=log, after_update=evaluate_checkpoint, history=history,
          checkpointing=checkpointing, resume=resume)
    if history["updates_done"] < config.updates:
        return groups, None, history
    return groups, evaluate(groups, config, log_Z), history

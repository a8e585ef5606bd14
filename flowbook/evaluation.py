"""The paper's evaluation of a trained DLGM (Section 6.2, Figure 4): per test point, the negative ELBO and
the importance-sampled −ln p(x) from the same S draws of q_K(z | x), and their test-set summary.

:func:`flowbook.trainer.evaluate` runs it in one go. :func:`evaluate_resumable` runs it in pieces: S = 5000
on all 10 000 test digits is 20–55 CPU-minutes per Table 2 row on one thread, so a run that is stopped
(a time limit, a killed process) saves what it has and continues where it stopped.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .models import DLGM
from .objectives import shared_draw_bounds

__all__ = ["point_bounds", "summarize", "evaluate_resumable", "STATE_FORMAT", "POINTS_FORMAT", "points_file_name",
           "save_point_values", "load_point_values", "stored_point_values", "paired_difference"]

STATE_FORMAT = "flowbook-evaluation-state-1"
POINTS_FORMAT = "flowbook-point-values-1"


@torch.no_grad()
def point_bounds(model: DLGM, x: Tensor, samples: int, generator: torch.Generator, chunk: int
                 ) -> tuple[Tensor, Tensor]:
    """(−ELBO, −ln p(x)) per row of ``x``, float64, from the same ``samples`` draws z_s ~ q_K(z | x).

    −ELBO ≈ −(1/S) Σ_s ln w_s and −ln p(x) ≈ −ln (1/S) Σ_s w_s with w_s = p(x, z_s)/q_K(z_s | x)
    (:func:`flowbook.objectives.shared_draw_bounds`); sharing the draws makes KL = the difference
    ≥ 0 for every point, not only in expectation. The samples go ``chunk`` at a time."""
    return shared_draw_bounds(lambda n: model.posterior_samples(x, n, generator)[1:],
                              lambda z: model.log_joint(x, z), samples, chunk)


def summarize(neg_elbo: Tensor, neg_log_p: Tensor, samples: int) -> dict[str, float | int]:
    """Test-set means of the per-point bounds, KL = −ELBO − (−ln p), and the standard errors of the means."""
    n = len(neg_log_p)
    return {"neg_elbo": neg_elbo.mean().item(), "neg_log_p": neg_log_p.mean().item(),
            "kl": (neg_elbo - neg_log_p).mean().item(),
            "neg_elbo_sem": (neg_elbo.std() / math.sqrt(n)).item(),
            "neg_log_p_sem": (neg_log_p.std() / math.sqrt(n)).item(),
            "points": int(n), "samples": int(samples)}


def points_file_name(name: str, samples: int, points: int, seed: int) -> str:
    """Where an evaluation's per-digit values live, relative to the results directory:
    ``points/<name>_S<samples>_n<points>_seed<seed>.json``."""
    return f"points/{name}_S{samples}_n{points}_seed{seed}.json"


def save_point_values(directory: str | Path, name: str, samples: int, seed: int, neg_elbo: Tensor,
                      neg_log_p: Tensor) -> str:
    """Write each test point's −ELBO and −ln p(x) of one evaluation (rounded to 1e-4 nats, far below the
    estimates' own error) to ``<directory>/``:func:`points_file_name`; returns that relative name."""
    from .results import write_json_atomic

    relative = points_file_name(name, samples, len(neg_log_p), seed)
    path = Path(directory) / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"format": POINTS_FORMAT, "name": name, "samples": int(samples), "seed": int(seed),
                             "points": len(neg_log_p),
                             "neg_elbo": [round(v, 4) for v in neg_elbo.tolist()],
                             "neg_log_p": [round(v, 4) for v in neg_log_p.tolist()]}, indent=None)
    return relative


def load_point_values(path: str | Path) -> dict[str, Any]:
    """Read a file of :func:`save_point_values`: its fields, with ``neg_elbo`` and ``neg_log_p`` as float64
    tensors; ValueError naming the file when it is not one."""
    import json

    path = Path(path)
    try:
        record = json.loads(path.read_text())
        ok = record.get("format") == POINTS_FORMAT and len(record["neg_elbo"]) == len(record["neg_log_p"]) \
            == record["points"]
    except (OSError, ValueError, AttributeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a readable file of per-point values ({err})") from err
    if not ok:
        raise ValueError(f"{path} is not a file of per-point values ({POINTS_FORMAT}) with as many values as "
                         "points; restore it with `git checkout`")
    return {**record, "neg_elbo": torch.tensor(record["neg_elbo"], dtype=torch.float64),
            "neg_log_p": torch.tensor(record["neg_log_p"], dtype=torch.float64)}


def stored_point_values(name: str, samples: int, points: int, seed: int = 1234) -> dict[str, Any]:
    """The per-point values of a stored evaluation of the row ``name`` (:func:`load_point_values`), read
    through the store (:func:`flowbook.store.path`: verified in a clone, downloaded elsewhere)."""
    from . import store

    return load_point_values(store.path(f"data/results/{points_file_name(name, samples, points, seed)}"))


def paired_difference(a: Tensor, b: Tensor) -> tuple[float, float]:
    """Mean of a − b over the same points and its standard error, sd(a − b)/√n: the comparison of two models
    on the same test digits, whose error is far smaller than either mean's (the digits' own spread of
    −ln p(x), several nats, cancels)."""
    if a.shape != b.shape or a.dim() != 1 or len(a) < 2:
        raise ValueError(f"paired values need two vectors of one length ≥ 2, got {tuple(a.shape)} and {tuple(b.shape)}")
    d = (a - b).to(torch.float64)
    return d.mean().item(), (d.std() / math.sqrt(len(d))).item()


def _weights_digest(model: DLGM) -> str:
    """A digest of the parameters, so that a saved state is only resumed for the weights it belongs to."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().to("cpu", torch.float64).numpy().tobytes())
    return h.hexdigest()[:16]


def evaluate_resumable(model: DLGM, x_test: Tensor, samples: int, state_path: str | Path, *,
                       batch: int = 100, seed: int = 1234, chunk: int | None = None,
                       max_minutes: float | None = None, save_every_s: float = 60.0
                       ) -> dict[str, Any] | None:
    """:func:`point_bounds` over ``x_test``, ``batch`` points at a time, saved to ``state_path`` as it goes.

    Batch b draws from a generator seeded ``seed + b``, so a resumed evaluation draws exactly what an
    uninterrupted one would, whatever the device of the model. Returns the :func:`summarize` metrics (plus
    ``eval_seconds``, the evaluation time summed over all pieces, and ``per_point``, each point's values as
    in :func:`flowbook.trainer.evaluate`) when every point is done, or None when
    ``max_minutes`` ran out first (the state is saved; call again to continue). A state saved for other
    weights, samples, seed, batch or points is refused with the path to delete."""
    p = next(model.parameters())
    x_test = x_test.to(device=p.device, dtype=p.dtype)
    state_path = Path(state_path)
    chunk = chunk or max(1, 20_000 // batch)
    key = {"format": STATE_FORMAT, "weights": _weights_digest(model), "samples": int(samples), "seed": int(seed),
           "batch": int(batch), "points": int(x_test.shape[0])}
    ne: list[Tensor] = []
    nl: list[Tensor] = []
    seconds = 0.0
    if state_path.exists():
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for truncated or foreign files
            raise ValueError(f"{state_path} is not a readable evaluation state ({type(err).__name__}); "
                             "delete it to start the evaluation over") from err
        _check_state(state, key, state_path)
        ne, nl, seconds = list(state["neg_elbo"].split(batch)), list(state["neg_log_p"].split(batch)), state["seconds"]

    def save() -> None:
        state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = state_path.with_name(f".{state_path.name}.{os.getpid()}.tmp")
        done = {"neg_elbo": torch.cat(ne) if ne else torch.zeros(0, dtype=torch.float64),
                "neg_log_p": torch.cat(nl) if nl else torch.zeros(0, dtype=torch.float64)}
        torch.save({**key, **done, "seconds": seconds}, tmp)
        tmp.replace(state_path)

    t_start = time.perf_counter()
    t_saved = t_start
    n_batches = math.ceil(x_test.shape[0] / batch)
    for b in range(len(ne), n_batches):
        t0 = time.perf_counter()
        gen = torch.Generator(device=p.device).manual_seed(seed + b)
        e, l = point_bounds(model, x_test[b * batch:(b + 1) * batch], samples, gen, chunk)
        ne.append(e.cpu())
        nl.append(l.cpu())
        now = time.perf_counter()
        seconds += now - t0
        if now - t_saved > save_every_s:
            save()
            t_saved = now
        if max_minutes is not None and now - t_start > 60 * max_minutes and b + 1 < n_batches:
            save()
            return None
    save()
    neg_elbo, neg_log_p = torch.cat(ne), torch.cat(nl)
    return {**summarize(neg_elbo, neg_log_p, samples), "eval_seconds": round(seconds, 3),
            "per_point": {"neg_elbo": neg_elbo, "neg_log_p": neg_log_p}}


def _check_state(state: Any, key: dict[str, Any], state_path: Path) -> None:
    """Refuse a saved evaluation state that is not one this module wrote for ``key`` (e.g. edited by
    hand), before any point is evaluated rather than when its values are summed at the end."""
    if not isinstance(state, dict) or {k: state.get(k) for k in key} != key:
        raise ValueError(f"{state_path} belongs to another evaluation (weights, samples, seed, batch or "
                         "points differ); delete it to start this one")
    done = [state.get(k) for k in ("neg_elbo", "neg_log_p")]
    n = done[0].shape[0] if isinstance(done[0], Tensor) and done[0].ndim == 1 else -1
    seconds = state.get("seconds")
    if not (all(isinstance(t, Tensor) and t.dtype == torch.float64 and t.shape == (n,)
                and bool(torch.isfinite(t).all()) for t in done)
            and (n % key["batch"] == 0 or n == key["points"]) and 0 <= n <= key["points"]
            and isinstance(seconds, (int, float)) and not isinstance(seconds, bool)
            and math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"{state_path} is not a valid evaluation state (its per-point values or its time "
                         "are damaged or edited); delete it to start the evaluation over")

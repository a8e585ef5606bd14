"""CIFAR-10 patches with a logit-normal DLGM: the paper's Table 3 (§6.2), as this book reads it.

The paper reports −ln p(x) = −293.7, −308.6, −317.9, −320.7 nats for a DLGM with K = 0, 2, 5, 10
planar flows on "continuous CIFAR-10 image data", and says nothing more about the data. This module
fixes the book's reading of the setting; it is an experiment beside binarized MNIST's (:mod:`flowbook.train`),
on the same dataset-free trainer (:mod:`flowbook.trainer`):

* data point: a random 3×8×8 patch (D = 192), :func:`flowbook.data.cifar10_patches`; the test set is
  a fixed, seeded draw from the test images (``CIFAR10_TEST_PATCH_SEED``);
* pixels → y = ε + (1 − 2ε)(x + u)/256 with u ~ U[0, 1)^D and ε = 1e-4
  (:func:`flowbook.data.to_unit_interval`): uniform dequantization, then a squeeze away from 0 and 1
  so that logit(y) is finite; the noise u is drawn once per patch from a seeded generator;
* likelihood: logit-normal, y_d = sigmoid(a_d), a_d ~ N(μ_d(z), σ_d(z)²), mean and variance both
  output by the decoder (:func:`flowbook.models.logit_normal_log_likelihood`, which includes the
  logit's Jacobian);
* model: the DLGM of :mod:`flowbook.models` with 30 latent variables and amortized planar flows,
  trained with the MNIST optimizer and annealing (:mod:`flowbook.trainer`);
* reported number: −ln p_V(v) in nats per patch, the density of v = (x + u)/256 on [0, 1)^D, i.e.
  ln p_V(v) = ln p_Y(y) + D ln(1 − 2ε) (:func:`nats_per_patch`); :func:`bpd_from_nats` converts it to
  bits per dimension of the 8-bit image, 8 + (−ln p_V)/(D ln 2).

Command line (:mod:`flowbook.cifarcli`): the chapter's fast run (about a minute on two cores), and full mode, the paper's
protocol, meant for a GPU and run in resumable pieces (repeat it until it prints "done")::

    python -m flowbook.cifar train --mode fast
    python -m flowbook.cifar train --mode full --max-minutes 9

A finished run writes ``data/results/cifar10_<mode>_K<K>.json`` per flow length, with provenance.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from . import data as fdata
from . import runner
from .models import DLGM
from .trainer import Run, TrainConfig, evaluate

__all__ = ["PATCH_SIZE", "PATCH_DIM", "EPS", "LATENT", "KS", "PAPER_TABLE3", "CifarConfig", "FAST", "FULL",
           "STORED", "config_for", "unit_patches", "train_data", "valid_data", "test_data", "nats_per_patch",
           "bpd_from_nats", "row_metrics", "evaluate_rows", "finish", "load_full_results", "to_pixels"]

PATCH_SIZE = 8
PATCH_DIM = 3 * PATCH_SIZE * PATCH_SIZE  # D = 192
EPS = 1e-4  # the squeeze [0, 1] → [ε, 1 − ε]
LATENT = 30  # the paper's CIFAR-10 DLGM (§6.2)
KS = (0, 2, 5, 10)
#: Table 3 of the paper — test −ln p(x) in nats per patch for a DLGM with K planar flows.
PAPER_TABLE3 = {0: -293.7, 2: -308.6, 5: -317.9, 10: -320.7}
#: Seeds of the dequantization noise u: fixed, so that a test patch has the same y in every run.
TRAIN_NOISE_SEED = 11
TEST_NOISE_SEED = 12


@dataclass(frozen=True)
class CifarConfig(TrainConfig):
    """A :class:`flowbook.trainer.TrainConfig` for CIFAR-10 patches: the same optimizer, annealing and
    evaluation fields as MNIST's, plus the fields of its patches; as the runner's
    configuration (:mod:`flowbook.runner`) it names the ``cifar10_*`` results (e.g. ``cifar10_stored_planar_K10``
    or ``cifar10_fast_seed0_diagonal``), gives the patches and evaluates in nats per patch."""
    dataset: ClassVar[str] = "cifar10"
    rows: tuple[tuple[str, int], ...] = tuple(("planar", K) for K in KS)
    likelihood: str = "logit_normal"
    data_dim: int = PATCH_DIM
    latent: int = LATENT
    # σ_d(z): the decoder outputs ln σ_d per dimension and per patch (see flowbook.models); a single
    # σ_d per pixel position ("per_dim") has to be as wide as the most textured patches need
    logit_normal_variance: str = "amortized"
    n_train: int = 50_000  # training patches, drawn once from the training images
    eps: float = EPS
    # the last ``valid_images`` training images are held out: validation patches come from them only
    valid_images: int = 0

    def model_fields(self) -> dict[str, Any]:
        """The common fields and the patches' data dimension, latent size and logit-normal variance."""
        return {**super().model_fields(), "data_dim": self.data_dim, "latent": self.latent,
                "logit_normal_variance": self.logit_normal_variance}

    def checkpoint_stem(self) -> str:
        """``cifar10_<mode>[_<label>]_K<K>[-<K>...]``, e.g. ``cifar10_stored_K10`` or ``cifar10_fast_K0-2-5-10``
        (the result names, :meth:`~flowbook.trainer.TrainConfig.result_name`, name the flow; the checkpoints keep this older form):
        the checkpoint's name before its digest (all rows are planar)."""
        label = f"_{self.label.replace(' ', '-')}" if self.label else ""
        return f"cifar10_{self.mode}{label}_K{'-'.join(str(K) for _, K in self.rows)}"

    def legacy_checkpoint_stem(self) -> str:
        """The stem of the checkpoints written before they were named after their dataset, e.g.
        ``mnist_stored_planar10``: a run that began under it resumes from that file
        (:func:`flowbook.checkpoints.find_checkpoint`)."""
        return self._rows_stem("mnist")

    def training_data(self) -> Tensor:
        """:func:`train_data`."""
        return train_data(self)

    def validation_data(self) -> Tensor:
        """:func:`valid_data`."""
        return valid_data(self)

    def test_data(self) -> Tensor:
        """:func:`test_data`."""
        return test_data(self)

    def data_record(self) -> dict[str, Any]:
        """What a result records of the data: the patches, their seeds, the dequantization, the unit."""
        return {"data": {"patch": f"3x{PATCH_SIZE}x{PATCH_SIZE}", "test_patch_seed": fdata.CIFAR10_TEST_PATCH_SEED,
                         "train_patch_seed": fdata.CIFAR10_TRAIN_PATCH_SEED,
                         "noise_seeds": [TRAIN_NOISE_SEED, TEST_NOISE_SEED], "dequantization": "(x + u)/256",
                         "eps": self.eps, "reported": "-ln p_V(v), nats per patch, v in [0,1)^D"}}

    def row_metrics(self, row: DLGM, x_test: Tensor, progress: bool | None = None) -> dict[str, Any]:
        """Table 3's numbers of one trained row (:func:`row_metrics`) with S = ``eval_samples``."""
        return row_metrics(row, x_test, self.eval_samples, self.data_dim, self.eps)


#: Fast mode (2 CPU cores, about a minute of training) — the four rows trained together on 50 000
#: patches, Adam and a short annealing as in the MNIST fast mode, a smaller network (200
#: pre-activations → 50 maxout units per layer); evaluated on 500 fixed test patches with S = 100.
FAST = CifarConfig(updates=1500, hidden=200, beta_warmup=500, eval_points=500, eval_samples=100)
#: Full mode — the paper's protocol (RMSprop, learning rate 1e-5, momentum 0.9, batches of 100,
#: 500 000 updates, β_t = min(1, 0.01 + t/10 000)), the MNIST network (400 pre-activations), one
#: million training patches, and 10 000 fixed test patches with S = 5000.
FULL = CifarConfig(mode="full", updates=500_000, optimizer="rmsprop", lr=1e-5, momentum=0.9, beta_warmup=10_000,
                   hidden=400, n_train=1_000_000, eval_points=10_000, eval_samples=5000)


#: Stored mode — the rows trained on a 2-core CPU and committed with their weights. The MNIST
#: stored protocol (:data:`flowbook.train.STORED`: Adam, cosine decay 1e-3 → 1e-5, 10 000-update
#: annealing, best-validation parameters kept) on one million patches of 45 000 training images, validated
#: on 2 000 patches of the 5 000 held-out training images, evaluated with S = 1000 on 10 000 test patches.
#: 120 000 updates: a first pass of 40 000 left every validation curve falling and the K = 0 → 10 gain
#: still widening (15 nats at update 10 000, 25 at 40 000).
STORED = CifarConfig(mode="stored", updates=120_000, optimizer="adam", lr=1e-3, lr_final=1e-5, beta_warmup=10_000,
                     hidden=400, n_train=1_000_000, valid_images=5000, valid_every=2000, valid_points=2000,
                     eval_points=10_000, eval_samples=1000)
PRESETS = {"fast": FAST, "stored": STORED, "full": FULL}
#: Seed of the validation patches (drawn from the held-out training images).
VALID_PATCH_SEED = 13


def config_for(mode: str) -> CifarConfig:
    """:data:`FAST`, :data:`STORED` or :data:`FULL` for ``mode``."""
    if mode not in PRESETS:
        raise ValueError(f"mode must be one of {tuple(PRESETS)}, got {mode!r}")
    return PRESETS[mode]


def unit_patches(patches: Tensor, eps: float = EPS, seed: int | None = None) -> Tensor:
    """uint8 patches (N, 3, s, s) → y = ε + (1 − 2ε)(x + u)/256 flattened to (N, 3·s·s), float32.

    The dequantization noise u comes from ``torch.Generator().manual_seed(seed)`` (global RNG if None),
    drawn on the CPU so that the same seed gives the same y on every device.
    """
    if patches.dtype != torch.uint8 or patches.ndim != 4:
        raise ValueError(f"patches must be uint8 (N, 3, s, s) from flowbook.data.cifar10_patches, "
                         f"got {patches.dtype} {tuple(patches.shape)}")
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return fdata.to_unit_interval(patches.cpu(), eps, generator=gen).reshape(patches.shape[0], -1)


def to_pixels(y: Tensor, eps: float = EPS) -> Tensor:
    """Invert the squeeze for pictures: y in [ε, 1 − ε] → v = (y − ε)/(1 − 2ε) in [0, 1], as
    (N, 3, 8, 8) images (clamped, so that model outputs outside [ε, 1 − ε] still display)."""
    v = ((y - eps) / (1 - 2 * eps)).clamp(0, 1)
    return v.reshape(y.shape[0], 3, PATCH_SIZE, PATCH_SIZE)


def train_data(cfg: CifarConfig, root: str | os.PathLike | None = None, images: Tensor | None = None) -> Tensor:
    """The ``cfg.n_train`` training patches as y (N, D), with fixed patch and noise seeds.
    ``images`` (the uint8 training split) skips reloading it."""
    if images is None:
        images, _ = fdata.load_cifar10("train", root)
    if cfg.valid_images:
        images = images[:images.shape[0] - cfg.valid_images]
    x = fdata.cifar10_patches("train", cfg.n_train, size=PATCH_SIZE, root=root, images=images)
    return unit_patches(x, cfg.eps, TRAIN_NOISE_SEED)


def valid_data(cfg: CifarConfig, root: str | os.PathLike | None = None, images: Tensor | None = None) -> Tensor:
    """``cfg.valid_points`` patches of the ``cfg.valid_images`` held-out training images, as y (N, D)."""
    if not cfg.valid_images:
        raise ValueError("this config holds out no training images (valid_images = 0): no validation set")
    if images is None:
        images, _ = fdata.load_cifar10("train", root)
    held_out = images[images.shape[0] - cfg.valid_images:]
    x = fdata.cifar10_patches("train", cfg.valid_points, size=PATCH_SIZE, seed=VALID_PATCH_SEED, images=held_out)
    return unit_patches(x, cfg.eps, VALID_PATCH_SEED)


def test_data(cfg: CifarConfig, root: str | os.PathLike | None = None, images: Tensor | None = None) -> Tensor:
    """The fixed test set: ``cfg.eval_points`` patches of the test images as y (N, D).
    ``images`` (the uint8 test split) skips reloading it."""
    x = fdata.cifar10_patches("test", cfg.eval_points, size=PATCH_SIZE, root=root, images=images)
    return unit_patches(x, cfg.eps, TEST_NOISE_SEED)


def nats_per_patch(log_p_y: Tensor | float, dim: int = PATCH_DIM, eps: float = EPS) -> Tensor | float:
    """−ln p_V(v) from ln p_Y(y): the density of v = (x + u)/256 on [0, 1)^D, whose map to
    y = ε + (1 − 2ε) v has log-Jacobian D ln(1 − 2ε), so ln p_V(v) = ln p_Y(y) + D ln(1 − 2ε)."""
    return -(log_p_y + fdata.unit_interval_log_jacobian(dim, eps))


def bpd_from_nats(nats: Tensor | float, dim: int = PATCH_DIM) -> Tensor | float:
    """Bits per dimension of the 8-bit data from −ln p_V(v) in nats per patch:
    (−ln p_V(v) + D ln 256)/(D ln 2) = 8 + (−ln p_V(v))/(D ln 2)."""
    return fdata.bits_per_dim(-nats - dim * math.log(256.0), dim)


def row_metrics(row: DLGM, x_test: Tensor, samples: int, dim: int = PATCH_DIM, eps: float = EPS,
                seed: int = 1234) -> dict[str, Any]:
    """One trained row on the test patches y, in nats per patch of v: :func:`flowbook.trainer.evaluate`
    (bound and importance-sampled ln p(x) with the same S draws) plus D ln(1 − 2ε)'s correction
    (:func:`nats_per_patch`), the bits per dimension and the standard errors."""
    shift = -fdata.unit_interval_log_jacobian(dim, eps)  # −ln p_V = −ln p_Y + shift
    m = evaluate(row, x_test, samples, seed=seed, progress=False)
    bound, nll = m["neg_elbo"] + shift, m["neg_log_p"] + shift
    return {"neg_elbo": bound, "neg_log_p": nll, "kl": m["kl"],
            "neg_elbo_sem": m["neg_elbo_sem"], "neg_log_p_sem": m["neg_log_p_sem"],
            "bpd": float(bpd_from_nats(nll, dim)), "points": m["points"], "samples": m["samples"]}


def evaluate_rows(run: Run, x_test: Tensor, samples: int | None = None, seed: int = 1234,
                  rows: list | None = None) -> dict[int, dict[str, float]]:
    """Every row of a trained run on the test patches y: {K: :func:`row_metrics` and ``eval_seconds``}."""
    cfg = run.config
    out = {}
    for (_, K), row in zip(cfg.rows, rows if rows is not None else run.final_rows()):
        t0 = time.perf_counter()
        out[K] = {**row_metrics(row, x_test, samples or cfg.eval_samples, cfg.data_dim, cfg.eps, seed),
                  "eval_seconds": round(time.perf_counter() - t0, 3)}
    return out


def finish(run: Run, *, device: str | torch.device, out_dir: str | Path | None, command: str | None = None,
           x_test: Tensor | None = None, weights_dir: str | Path | None = None,
           overwrite: bool = False) -> dict[int, dict[str, Any]]:
    """:func:`flowbook.runner.finish` of a CIFAR-10 run, {K: metrics}: writes ``cifar10_<mode>_K<K>.json``
    per row (with provenance) and, with ``weights_dir``, the float16 weights they were computed from."""
    metrics = runner.finish(run, device=device, out_dir=out_dir, command=command, x_test=x_test, progress=False,
                            weights_dir=weights_dir, overwrite=overwrite)
    return {K: metrics[run.config.result_name(flow, K)] for flow, K in run.config.rows}


def load_full_results(directory: str | Path | None = None) -> dict[int, dict[str, Any]]:
    """The stored full-mode results, {K: record}: only unlabelled runs (a label marks a dry run or a
    variant) that did all of :data:`FULL`'s updates; each record has its provenance
    (:func:`flowbook.results.load_result`)."""
    from .results import load_results

    out = {}
    for record in load_results("cifar10_full_", directory):
        train_cfg = record["config"].get("train", {})
        if train_cfg.get("label") or record["config"].get("updates_done", 0) < FULL.updates:
            continue
        out[record["config"]["model"]["K"]] = record
    return out


if __name__ == "__main__":  # `python -m flowbook.cifar train ...`, the command of .ci and chapter 6: a thin entry
    from flowbook.cifarcli import main

    sys.exit(main())

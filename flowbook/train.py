"""Binarized MNIST's experiment, the paper's Table 2 (§6.2): its configuration (:class:`MnistConfig`: the
data, the names and the evaluation), its presets and the continuation stages of its stored rows. The
trainer it runs on is dataset-free (:mod:`flowbook.trainer`), like CIFAR-10's experiment beside it
(:mod:`flowbook.cifar`).

Protocol (``mode="full"``, the paper's §6.2): RMSprop with learning rate 1e-5 and momentum 0.9,
minibatches of 100, 500 000 updates, and the annealed free energy of eq. 15 with
β_t = min(1, 0.01 + t/10 000) multiplying ln p(x, z_K). ``mode="fast"`` is a short schedule for 2 CPU
cores (:data:`FAST`): 2 000 updates of Adam at learning rate 1e-3 with a 500-update annealing, so that
a few minutes learn something real; its numbers are labelled fast mode wherever they appear.

The trainer's names (:func:`~flowbook.trainer.train`, :func:`~flowbook.trainer.evaluate`,
:class:`~flowbook.trainer.TrainConfig`, ...) are importable from here too, where they were first written.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from . import data as fdata
from .data.files import file_sha256
from .models import DLGM
from .runid import run_name
# the trainer's names under their first import path (flowbook.train.train, ...), which chapters and scripts use
from .trainer import (Averager, Run, TrainConfig, build_model, evaluate, make_optimizer, parse_rows, stage_chain,
                      start_from_weights, train, validation_free_energy)

# (the trainer's names are documented in flowbook.trainer, their home, not here again)
__all__ = ["PAPER_TABLE2", "MnistConfig", "FAST", "FULL", "STORED", "PRESETS", "continuation"]

#: Table 2 of the paper — test −ln p(x) in nats on binarized MNIST (S = 5000 importance samples),
#: {(flow, K): value}, K = 0 as ``("diagonal", 0)``.
PAPER_TABLE2 = {("diagonal", 0): 89.9,
                ("planar", 10): 87.5, ("planar", 20): 86.5, ("planar", 40): 85.7, ("planar", 80): 85.1,
                ("nice", 10): 88.6, ("nice", 20): 87.9, ("nice", 40): 87.3, ("nice", 80): 87.2}


@dataclass(frozen=True)
class MnistConfig(TrainConfig):
    """Binarized MNIST's configuration of the runner (:class:`flowbook.runid.RunConfig`): the fields of
    :class:`flowbook.trainer.TrainConfig` (its defaults are fast mode's), the ``mnist_*`` names, the
    digits and Table 2's evaluation. It adds no field, so its runs keep their digests."""
    dataset: ClassVar[str] = "mnist"

    def training_data(self) -> Tensor:
        """Binarized MNIST's 50 000 training digits."""
        return fdata.binarized_mnist("train")

    def validation_data(self) -> Tensor:
        """The first ``valid_points`` of binarized MNIST's 10 000 validation digits."""
        return fdata.binarized_mnist("valid")[:self.valid_points]

    def test_data(self) -> Tensor:
        """The first ``eval_points`` of binarized MNIST's 10 000 test digits."""
        return fdata.binarized_mnist("test")[:self.eval_points]

    def data_record(self) -> dict[str, Any]:
        """What a result records of the data: the binarization used (it moves −ln p(x) by about a nat)."""
        return {"binarization": fdata.binarized_mnist_source()}

    def row_metrics(self, row: DLGM, x_test: Tensor, progress: bool | None = None) -> dict[str, Any]:
        """Table 2's numbers of one trained row: :func:`flowbook.trainer.evaluate` with S = ``eval_samples``, in
        nats, with each test digit's values under ``per_point`` (so that rows compare on the same digits)."""
        return evaluate(row, x_test, self.eval_samples, progress=progress, per_point=True)


#: Fast mode — 2 CPU cores, minutes. Adam with learning rate 1e-3 and a 500-update annealing. Why not the
#: paper's RMSprop: its running average of squared gradients starts at zero, so its first steps are
#: ≈10× the learning rate (≈100× with momentum 0.9); at the paper's 1e-5 that is harmless, but at a
#: learning rate large enough to learn in 2 000 updates it blows the free energy up. Adam's bias
#: correction removes exactly that start-up effect.
FAST = MnistConfig()
#: Full mode — the paper's protocol (§6.2) and Table 2's evaluation (S = 5000 on the whole test set).
FULL = MnistConfig(mode="full", updates=500_000, optimizer="rmsprop", lr=1e-5, momentum=0.9, beta_warmup=10_000,
                   eval_points=10_000, eval_samples=5000)
#: Stored mode — the protocol of the rows trained on a 2-core CPU and committed with their
#: weights (``data/results/mnist_stored_*``, ``data/weights/``). Adam (its bias correction allows a large
#: rate from the first update, where RMSprop's start-up blows up, see FAST) with a cosine decay from 1e-3
#: to 1e-5, the paper's 10 000-update annealing, and the best-validation parameters kept (checked every
#: 2 000 updates on 2 000 of the 10 000 validation digits, which are never trained on). Table 2's
#: evaluation: S = 5000 on the whole test set.
STORED = MnistConfig(mode="stored", updates=60_000, optimizer="adam", lr=1e-3, lr_final=1e-5, beta_warmup=10_000,
                     valid_every=2000, valid_points=2000, eval_points=10_000, eval_samples=5000)
PRESETS = {"fast": FAST, "stored": STORED, "full": FULL}


def continuation(flow: str, K: int, label: str) -> dict[str, Any]:
    """The :class:`MnistConfig` fields of a stage that continues the stored row (``flow``, ``K``) of the
    protocol variant ``label`` (e.g. ``"updates120k"``) from its committed weights: the file and its
    sha256, the updates the row has had so far, and β = 1 from the first update (the row was annealed in
    its first stage). Raises ValueError naming the file when the row is not stored or not finished."""
    from .results import REPO_ROOT, load_result

    name = run_name(MnistConfig.dataset, flow, K, "stored", label)
    weights, result = f"data/weights/{name}.pt", REPO_ROOT / "data" / "results" / f"{name}.json"
    if not (REPO_ROOT / weights).is_file() or not result.is_file():
        raise ValueError(f"--continue-from {label}: no stored row {name} (its weights {weights} and result "
                         f"{result.relative_to(REPO_ROOT)} must both be committed)")
    stage = load_result(result)["config"]["train"]
    done = stage.get("updates_before", 0) + stage["updates"]
    return {"init_from": weights, "init_sha256": file_sha256(REPO_ROOT / weights), "updates_before": done,
            "beta_start": 1.0}

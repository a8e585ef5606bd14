"""A run's identity: what a configuration must say about itself (:class:`RunConfig`) and the digest that
names its checkpoints and recognizes its stored results (:func:`config_digest`).

It sits below the trainer, the checkpoints and the runner, which all import it, so that none of them
imports another for its identity.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Protocol

__all__ = ["RunConfig", "LATER_FIELDS", "training_fields", "config_digest", "row_name", "run_prefix", "run_name"]


class RunConfig(Protocol):
    """What the runner needs of an experiment's configuration (a frozen dataclass whose fields are
    everything its result depends on)."""

    def digest(self) -> str:
        """:func:`config_digest` of the fields: a checkpoint or stored result belongs to this run only if
        its digest is this."""

    def checkpoint_stem(self) -> str:
        """The checkpoint's name before its digest, e.g. ``mnist_stored_planar80``."""

    @staticmethod
    def trained_config(result_config: dict) -> dict:
        """The fields of this configuration in a stored result's ``config`` (KeyError or TypeError when
        they are not there), to compare with :meth:`digest`."""


#: Training fields added after rows were stored, with the value that means "as before" (a run from scratch).
#: At that value they are left out of a run's identity, so every stored row and checkpoint keeps its digest.
#: ``flow_options`` (a flow type's own options, :func:`flowbook.flows.as_options`) is neutral when empty.
LATER_FIELDS: dict[str, Any] = {"init_from": "", "init_sha256": "", "updates_before": 0, "warmup": 0,
                                "ema_decay": 0.0, "fused": False, "flow_options": ()}
_ABSENT = object()


def _plain(value: Any) -> Any:
    """``value`` with its tuples as lists, as JSON gives it back: a config compares the same before
    and after it is stored."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def training_fields(config: dict) -> dict:
    """The fields of a run's config that its training depends on: all but the ``eval_*`` ones and the
    :data:`LATER_FIELDS` at their neutral value (what :func:`config_digest` hashes)."""
    return {k: v for k, v in config.items()
            if not k.startswith("eval_") and _plain(LATER_FIELDS.get(k, _ABSENT)) != _plain(v)}


def config_digest(config: dict) -> str:
    """:meth:`flowbook.trainer.TrainConfig.digest` of a config stored as a dict (e.g. in a result's provenance):
    the first 12 hex digits of the sha256 of the JSON of its :func:`training_fields`."""
    return hashlib.sha256(json.dumps(training_fields(config), sort_keys=True).encode()).hexdigest()[:12]


def row_name(flow: str, K: int) -> str:
    """A DLGM row's part of a name: ``diagonal`` for K = 0 (no flow, whatever its type), else ``<flow>_K<K>``."""
    return "diagonal" if K == 0 else f"{flow}_K{K}"


def run_prefix(dataset: str, protocol: str = "stored", label: str | None = None) -> str:
    """``<dataset>_<protocol>[_<label>]_``: what the names of one protocol's (or variant's) rows begin with."""
    variant = f"{protocol}_{label.replace(' ', '-')}" if label else protocol
    return f"{dataset}_{variant}_"


def run_name(dataset: str, flow: str, K: int, protocol: str = "stored", label: str | None = None) -> str:
    """The one name of a DLGM row's result and weights: ``<dataset>_<protocol>[_<label>]_<row>``, e.g.
    ``mnist_stored_planar_K80``, ``mnist_stored_diagonal`` (K = 0, :func:`row_name`),
    ``cifar10_stored_planar_K10`` or, for a variant, ``mnist_stored_updates120k_planar_K80`` (the label
    follows the protocol; its spaces become hyphens)."""
    return run_prefix(dataset, protocol, label) + row_name(flow, K)

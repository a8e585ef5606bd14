"""Trained weights of the stored runs (Tables 2 and 3), committed in ``data/weights/``.

The stored rows are trained on the project's CPU (``python -m flowbook train --mode stored ...``) and
their parameters are written here as float16 state dicts (a K = 80 planar row is about 2.4 MB), so a
reader in Colab sees trained models without training::

    from flowbook import pretrained
    model = pretrained.load("planar", 80, label="updates120k")  # binarized MNIST, Table 2
    model = pretrained.load("planar", 10, "cifar10")           # CIFAR-10 patches, Table 3

Table 2's rows were trained with 120 000 updates (the label ``updates120k``); the unlabelled MNIST rows are
the first protocol's 60 000 updates, kept for comparison (chapter 5).

The stored results (``data/results/<name>.json``) are computed from exactly these rounded weights
(:func:`round_like_saved` runs before the evaluation), so loading a file reproduces its result.
Buffers (NICE's fixed orthogonal mixings) are not stored: :class:`~flowbook.models.DLGM` rebuilds them
from the config's seed, exactly.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .models import DLGM, DLGMConfig
from .results import REPO_ROOT, load_results

__all__ = ["WEIGHTS_DIR", "FORMAT", "weights_name", "save", "load", "load_file", "round_like_saved", "stored_results"]

WEIGHTS_DIR = REPO_ROOT / "data" / "weights"
FORMAT = "flowbook-dlgm-weights-1"


def _variant(protocol: str, label: str | None) -> str:
    # the one naming rule of a variant: its label follows the protocol (stored_updates120k)
    return f"{protocol}_{label}" if label else protocol


def weights_name(dataset: str, flow: str, K: int, protocol: str = "stored", label: str | None = None) -> str:
    """``mnist_stored_planar_K80``, ``mnist_stored_diagonal`` (K = 0) or ``cifar10_stored_K10`` (CIFAR-10's
    rows are all planar); a variant's label follows the protocol (``mnist_stored_updates120k_planar_K80``).
    The result JSON has the same name."""
    protocol = _variant(protocol, label)
    if dataset == "cifar10":
        return f"cifar10_{protocol}_K{K}"
    row = "diagonal" if K == 0 else f"{flow}_K{K}"
    return f"{dataset}_{protocol}_{row}"


@torch.no_grad()
def round_like_saved(model: DLGM) -> DLGM:
    """Round every parameter through float16 in place (what :func:`save` stores), and return the model."""
    for p in model.parameters():
        p.copy_(p.to(torch.float16).to(p.dtype))
    return model


def save(model: DLGM, name: str, directory: str | Path | None = None) -> Path:
    """Write the parameters of ``model`` as float16 with its config to ``<directory>/<name>.pt``."""
    directory = Path(directory) if directory is not None else WEIGHTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: p.detach().to("cpu", torch.float16).clone() for k, p in model.named_parameters()}
    path = directory / f"{name}.pt"
    # one temporary per process, so that two writers of the same weights cannot interleave
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"format": FORMAT, "config": model.config.to_dict(), "state": state}, tmp)
    tmp.replace(path)
    return path


def load_file(path: str | Path, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32) -> DLGM:
    """A :class:`~flowbook.models.DLGM` from a weights file written by :func:`save`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file {path}; the stored rows are listed in {WEIGHTS_DIR} "
                                "(or train the row: python -m flowbook train --mode stored ...)")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise ValueError(f"{path} is not a readable weights file ({type(err).__name__}: {err}); "
                         "restore it with `git checkout -- {path}`") from err
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{path} is not a flowbook weights file (format {FORMAT!r} expected)")
    model = DLGM(DLGMConfig(**record["config"]))
    names = {k for k, _ in model.named_parameters()}
    if set(record["state"]) != names:
        raise ValueError(f"{path} holds parameters {sorted(set(record['state']) ^ names)} that do not match "
                         f"its config; the file is damaged or from another version")
    model.load_state_dict({**model.state_dict(), **record["state"]})
    return model.to(device=device, dtype=dtype).eval()


def load(flow: str, K: int, dataset: str = "mnist", protocol: str = "stored", *,
         label: str | None = None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
         directory: str | Path | None = None) -> DLGM:
    """The trained row (``flow``, ``K``) of ``dataset`` (``"mnist"``: Table 2, ``"cifar10"``: Table 3);
    ``label`` picks a variant of the protocol (e.g. ``"updates120k"``: twice the updates)."""
    directory = Path(directory) if directory is not None else WEIGHTS_DIR
    return load_file(directory / f"{weights_name(dataset, flow, K, protocol, label)}.pt", device, dtype)


def stored_results(dataset: str = "mnist", protocol: str = "stored", directory: str | Path | None = None,
                   label: str | None = None) -> dict[tuple[str, int], dict]:
    """The stored rows of ``dataset`` that finished all their updates: {(flow, K): result record}, with
    K = 0 as ``("diagonal", 0)``. Unlabelled runs by default (a label marks a dry run or a variant);
    ``label`` gives that variant's rows instead, e.g. ``"updates120k"``."""
    out = {}
    for record in load_results(f"{dataset}_{_variant(protocol, label)}_", directory):
        cfg = record["config"]
        if (cfg["train"].get("label") or None) != (label or None) \
                or cfg.get("updates_done", 0) < cfg["train"]["updates"]:
            continue
        model = cfg["model"]
        out[("diagonal", 0) if model["K"] == 0 else (model["flow"], model["K"])] = record
    return out

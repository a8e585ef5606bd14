"""Trained weights of the stored runs (Tables 2 and 3), committed in ``data/weights/``.

The stored rows are trained on a 2-core CPU (``python -m flowbook train --mode stored ...``) and
their parameters are written here as float16 state dicts (a K = 80 planar row is about 2.4 MB), so a
reader in Colab sees trained models without training::

    from flowbook import pretrained
    model = pretrained.load("planar", 80, label="updates120k")  # binarized MNIST, Table 2
    model = pretrained.load("planar", 10, "cifar10")           # CIFAR-10 patches, Table 3

Table 2's rows were trained with 120 000 updates (the label ``updates120k``); the unlabelled MNIST rows are
the first protocol's 60 000 updates, kept for comparison (chapter 5). Later stages continue a row
(``updates240k``, ...), and only a row's latest stage keeps its weights in the tree
(:func:`latest_stage`): a superseded stage keeps its result, whose provenance names its weights by SHA-256.

The stored results (``data/results/<name>.json``) are computed from exactly these rounded weights
(:func:`round_like_saved` runs before the evaluation), so loading a file reproduces its result.
Buffers (NICE's fixed orthogonal mixings) are not stored: :class:`~flowbook.models.DLGM` rebuilds them
from the config's seed, exactly.

Both files come through :mod:`flowbook.store` (a clone's files, or downloads outside a clone), and a
row is accepted only if it is what was asked for: the result's dataset, flow, K, protocol and label
(``config.model``, ``config.train``) give its name, the run finished its updates, the weights' config
is the result's ``config.model``, every tensor is finite floating point of the config's shape, and each
file's SHA-256 is the manifest's. Anything else is a :class:`flowbook.store.StoreError` that names the
file, what was expected and found, and how to restore it.
"""
from __future__ import annotations

import io
import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from . import store
from .models import DLGM, DLGMConfig
from .results import REPO_ROOT, load_result
from .runid import row_name, run_name, run_prefix
from .store import StoreError

__all__ = ["WEIGHTS_DIR", "FORMAT", "DATA_DIMS", "save", "load", "load_file", "round_like_saved",
           "check_result", "stored_results", "latest_stage"]

WEIGHTS_DIR = REPO_ROOT / "data" / "weights"
FORMAT = "flowbook-dlgm-weights-1"
#: The data dimension of each dataset's model (binarized MNIST digits, CIFAR-10's 3 × 8 × 8 patches).
DATA_DIMS = {"mnist": 784, "cifar10": 192}
#: The numbers every evaluation of a stored row holds (:func:`flowbook.results.evaluation` reads them).
_METRICS = ("neg_elbo", "neg_log_p", "points", "samples")


def _hint(path: Path) -> str:
    """How to restore ``path``: from git or the store when it is a stored file, else by removing it."""
    rel = store.relpath_of(path)
    if rel in store.manifest():
        return store.restore_hint(rel)
    return (f"it is not a file flowbook wrote for this row: remove it (or move it out of {path.parent}) and "
            "write the row again with its command (python -m flowbook train ...)")


def _fail(path: Path, what: str) -> StoreError:
    return StoreError(f"{path}: {what}; {_hint(path)}")


@torch.no_grad()
def round_like_saved(model: DLGM) -> DLGM:
    """Round every parameter through float16 in place (what :func:`save` stores), and return the model."""
    for p in model.parameters():
        p.copy_(p.to(torch.float16).to(p.dtype))
    return model


def _remove_stale_temporaries(path: Path) -> None:
    """Remove ``.NAME.pt.PID.tmp`` files of ``path`` left by writers that were killed (their pid is gone)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            os.kill(int(tmp.name[len(path.name) + 2:-4]), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except (ValueError, PermissionError, OSError):
            pass  # not one of ours, or a live process of another user: leave it


def save(model: DLGM, name: str, directory: str | Path | None = None) -> Path:
    """Write the parameters of ``model`` as float16 with its config to ``<directory>/<name>.pt``.

    The bytes depend only on the model (identical runs give identical files, so git sees no change), and
    the file is replaced atomically; the temporary file is removed on any failure."""
    directory = Path(directory) if directory is not None else WEIGHTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: p.detach().to("cpu", torch.float16).clone() for k, p in model.named_parameters()}
    # serialized in memory: torch names the archive after the file it writes to, and a temporary file's
    # name would make every save's bytes differ
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "config": model.config.to_dict(), "state": state}, buffer)
    path = directory / f"{name}.pt"
    _remove_stale_temporaries(path)
    # one temporary per process, so that two writers of the same weights cannot interleave
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_metrics(path: Path, where: str, metrics: Any) -> None:
    if not isinstance(metrics, dict):
        raise _fail(path, f"{where} is {type(metrics).__name__}, not an object with {', '.join(_METRICS)}")
    for key in _METRICS:
        value = metrics.get(key)
        ok = (_is_count(value) and value > 0 if key in ("points", "samples")
              else isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))
        if not ok:
            raise _fail(path, f"{where}[{key!r}] is {value!r}, not a finite number"
                              + (" > 0" if key in ("points", "samples") else ""))


def check_result(record: dict[str, Any], path: str | Path, **asked: Any) -> dict[str, Any]:
    """The identity of a stored row's result ``record`` read from ``path``: {dataset, flow, K, protocol,
    label, updates, updates_done, name}, after checking that the record is well formed, that its name is
    the file's and the one its content implies (:func:`flowbook.runid.run_name`), and that it is what was ``asked``
    (any of ``dataset``, ``flow``, ``K``, ``protocol``, ``label``; a K = 0 row is any flow's). Raises
    :class:`flowbook.store.StoreError` otherwise."""
    path = Path(path)
    cfg = record.get("config")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("train"), dict) or not isinstance(cfg.get("model"), dict):
        found = "null" if cfg is None else (f"keys {sorted(cfg)}" if isinstance(cfg, dict) else type(cfg).__name__)
        raise _fail(path, f"'config' must be an object with objects 'train' and 'model' (found {found})")
    model, train = cfg["model"], cfg["train"]
    dataset = next((d for d, dim in DATA_DIMS.items() if model.get("data_dim") == dim), None)
    ident = {"dataset": dataset, "flow": model.get("flow"), "K": model.get("K"), "protocol": train.get("mode"),
             "label": train.get("label") or None, "updates": train.get("updates"),
             "updates_done": cfg.get("updates_done")}
    bad = [f"{k} {v!r}" for k, v in ident.items()
           if (v is None and k != "label") or (k in ("K", "updates", "updates_done") and not _is_count(v))
           or (k in ("flow", "protocol", "label") and v is not None and not isinstance(v, str))]
    if bad:
        raise _fail(path, f"the record does not say which row it is ({', '.join(bad)}; from config.model "
                          "data_dim, flow, K; config.train mode, label, updates; config.updates_done)")
    ident["name"] = run_name(ident["dataset"], ident["flow"], ident["K"], ident["protocol"], ident["label"])
    if not (ident["name"] == path.stem == record.get("name")):
        raise _fail(path, f"its content is the run {ident['name']} (name field {record.get('name')!r}), "
                          f"not {path.stem}")
    wrong = [f"{k} {ident[k]!r} (asked {v!r})" for k, v in asked.items()
             if ident[k] != (v or None if k == "label" else v) and not (k == "flow" and ident["K"] == 0)]
    if wrong:
        raise _fail(path, f"it holds another row: {', '.join(wrong)}")
    _check_metrics(path, "metrics", record.get("metrics"))
    evaluations = record.get("evaluations", [])
    if not isinstance(evaluations, list):
        raise _fail(path, f"'evaluations' is {type(evaluations).__name__}, not a list")
    for i, entry in enumerate(evaluations):
        _check_metrics(path, f"evaluations[{i}]", entry)
    return ident


def _read_weights(path: Path) -> dict[str, Any]:
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise _fail(path, f"not a readable weights file ({type(err).__name__}: {err})") from err
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise _fail(path, f"not a flowbook weights file (format {FORMAT!r} expected)")
    return record


def load_file(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, *,
              expected_config: dict[str, Any] | None = None) -> DLGM:
    """A :class:`~flowbook.models.DLGM` from a weights file written by :func:`save`.

    The file must be the row its name says (``mnist_stored_planar_K80.pt`` holds a planar K = 80 MNIST
    model), its config must equal ``expected_config`` when given (its result's ``config.model``), and every
    tensor must be finite floating point of the config's shape; a stored file must also match the
    manifest's SHA-256. Raises :class:`flowbook.store.StoreError` (a ValueError) otherwise, and
    FileNotFoundError for a missing file.

    Args:
        path: the ``.pt`` file.
        device: where the model goes.
        dtype: the model's floating point type (inputs of another float type are cast to it).
        expected_config: the config the file must hold.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file {path}; the stored rows are listed in {WEIGHTS_DIR} "
                                "(or train the row: python -m flowbook train --mode stored ...)")
    rel = store.relpath_of(path)
    if rel in store.manifest():
        store.check_file(path, rel)
    record = _read_weights(path)
    config = record.get("config")
    if not isinstance(config, dict):
        raise _fail(path, f"'config' is {type(config).__name__}, not the model's config (an object)")
    try:
        model = DLGM(DLGMConfig(**config))
    except (TypeError, ValueError) as err:
        raise _fail(path, f"its config {config} is not a valid model config ({err})") from err
    if expected_config is not None and config != expected_config:
        diff = sorted(k for k in set(config) | set(expected_config) if config.get(k) != expected_config.get(k))
        raise _fail(path, "its config differs from its result's config.model in "
                          + ", ".join(f"{k} ({config.get(k)!r} here, {expected_config.get(k)!r} there)" for k in diff))
    c = model.config
    dataset = next((d for d, dim in DATA_DIMS.items() if dim == c.data_dim), None)
    row = row_name(c.flow, c.K)
    if dataset is None or not (path.stem.startswith(f"{dataset}_") and path.stem.endswith(f"_{row}")):
        raise _fail(path, f"its config is a {dataset or f'data_dim {c.data_dim}'} model with flow {c.flow}, "
                          f"K = {c.K} (a file named {dataset or 'DATASET'}_..._{row}.pt), not {path.stem}")
    state, params = record.get("state"), dict(model.named_parameters())
    if not isinstance(state, dict) or set(state) != set(params):
        found = sorted(set(state) ^ set(params)) if isinstance(state, dict) else type(state).__name__
        raise _fail(path, f"its parameters do not match its config (differing: {found}); the file is damaged "
                          "or from another version")
    for key, p in params.items():
        t = state[key]
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.shape != p.shape:
            found = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise _fail(path, f"parameter {key} is {found}, expected floating point {tuple(p.shape)}")
        if not torch.isfinite(t).all():
            raise _fail(path, f"parameter {key} holds {int((~torch.isfinite(t)).sum())} non-finite values")
    model.load_state_dict({**model.state_dict(), **state})
    return model.to(device=device, dtype=dtype).eval()


def _stored_pair(name: str, dataset: str) -> tuple[Path, Path]:
    """The verified result and weights files of the stored run ``name``."""
    result_rel, weights_rel = f"data/results/{name}.json", f"data/weights/{name}.pt"
    listed = store.manifest()
    if weights_rel in listed and result_rel in listed:
        return store.path(result_rel), store.path(weights_rel)
    if store.in_clone() and (REPO_ROOT / weights_rel).exists() and (REPO_ROOT / result_rel).exists():
        return REPO_ROOT / result_rel, REPO_ROOT / weights_rel  # a new run, not stored yet: content checks only
    rows = sorted(Path(r).stem for r in store.listed(f"data/weights/{dataset}_"))
    raise FileNotFoundError(f"no stored run {name} (its {weights_rel} and {result_rel}); the stored rows of "
                            f"{dataset}: {', '.join(rows)} (or train the row: python -m flowbook train --mode "
                            "stored ...)")


def load(flow: str, K: int, dataset: str = "mnist", protocol: str = "stored", *,
         label: str | None = None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
         directory: str | Path | None = None) -> DLGM:
    """The trained row (``flow``, ``K``) of ``dataset`` (``"mnist"``: Table 2, ``"cifar10"``: Table 3);
    ``label`` picks a variant of the protocol (e.g. ``"updates120k"``: twice the updates).

    The stored row comes through :mod:`flowbook.store` with its result, and is checked against both (see
    the module docstring). With ``directory``, the file ``<directory>/<name>.pt`` is read instead and
    checked by :func:`load_file` (its name, shapes and values; there is no result to compare with)."""
    name = run_name(dataset, flow, K, protocol, label)
    if directory is not None:
        return load_file(Path(directory) / f"{name}.pt", device, dtype)
    result_path, weights_path = _stored_pair(name, dataset)
    record = load_result(result_path)
    ident = check_result(record, result_path, dataset=dataset, flow=flow, K=K, protocol=protocol, label=label)
    if ident["updates_done"] != ident["updates"]:
        raise _fail(result_path, f"its run stopped at update {ident['updates_done']} of {ident['updates']}")
    pointer = record["config"].get("weights")
    if pointer not in (None, f"data/weights/{name}.pt"):
        raise _fail(result_path, f"its weights are {pointer}, not data/weights/{name}.pt")
    return load_file(weights_path, device, dtype, expected_config=record["config"]["model"])


def stored_results(dataset: str = "mnist", protocol: str = "stored", directory: str | Path | None = None,
                   label: str | None = None) -> dict[tuple[str, int], dict]:
    """The stored rows of ``dataset`` that finished all their updates: {(flow, K): result record}, with
    K = 0 as ``("diagonal", 0)``. Unlabelled runs by default (a label marks a dry run or a variant);
    ``label`` gives that variant's rows instead, e.g. ``"updates120k"``.

    The rows are the results the store's manifest lists (or, with ``directory``, that folder's
    ``<name>.json`` files); each is checked by :func:`check_result`, and inside a clone the row's local
    weights file must match the manifest too, so a stray or copied file is refused, never a row."""
    prefix = run_prefix(dataset, protocol, label)
    if directory is None:
        paths = [store.path(rel) for rel in store.listed(f"data/results/{prefix}") if rel.endswith(".json")]
    else:
        paths = sorted(Path(directory).glob(f"{prefix}*.json"))
    out = {}
    for path in paths:
        record = load_result(path)
        ident = check_result(record, path, dataset=dataset, protocol=protocol)
        if ident["label"] != (label or None) or ident["updates_done"] < ident["updates"]:
            continue
        weights_rel = f"data/weights/{ident['name']}.pt"
        if directory is None and weights_rel in store.manifest() and store.in_clone() \
                and (REPO_ROOT / weights_rel).exists():
            store.check_file(REPO_ROOT / weights_rel, weights_rel)  # another row's weights copied here
        out[("diagonal", 0) if ident["K"] == 0 else (ident["flow"], ident["K"])] = record
    return out


def latest_stage(flow: str, K: int, dataset: str = "mnist") -> str | None:
    """The label of the stage of row (``flow``, ``K``) whose weights are stored, for :func:`load`: None for
    the unlabelled first protocol, ``"updates240k"`` for the stage that ends at 240 000 updates, ... Only a
    row's latest stage keeps its weights; where two are listed (a stage just committed), the one with more
    updates in all wins. Raises FileNotFoundError when the row has no stored weights."""
    found: dict[str | None, int] = {}
    for rel in store.listed(f"data/weights/{run_prefix(dataset)}"):
        result_rel = f"data/results/{Path(rel).stem}.json"
        if result_rel not in store.manifest():
            continue
        record = load_result(store.path(result_rel))
        # the result's identity, its name checked against the one naming rule (runid.run_name)
        ident = check_result(record, store.path(result_rel), dataset=dataset, protocol="stored")
        same_row = ident["K"] == K and (K == 0 or ident["flow"] == flow)
        if same_row and (ident["label"] is None or re.fullmatch(r"updates\d+k", ident["label"])):
            train = record["config"]["train"]
            found[ident["label"]] = train["updates"] + train.get("updates_before", 0)
    if not found:
        raise FileNotFoundError(f"no stored weights of the {dataset} row {row_name(flow, K)}")
    return max(found, key=found.__getitem__)

"""MNIST (grey levels) and binarized MNIST, the data of the paper's Table 2 (Section 6.2).

Binarized MNIST comes in two flavours, and every reported number must say which one it used
(:func:`binarized_mnist_source`); the choice of binarization alone moves -ln p(x) by about a nat:

* ``"larochelle-murray"``: the canonical static binarization of Larochelle & Murray (2011), files
  ``binarized_mnist_{train,valid,test}.amat`` (50k / 10k / 10k), used by the paper's Table 2;
* ``"sampled-seed-2015"``: an honest offline substitute, a static binarization sampled *once* from
  MNIST's grey levels with the fixed seed :data:`BINARIZATION_SEED` (see :func:`sample_static_binarization`).
  It has the same split sizes and statistics but is not the same sample, so its numbers are
  comparable with the paper's only up to that difference.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .files import (GET_DATASETS, DataFileError, check_arrays, check_sha256, data_root, load_split, record_verified,
                    split_name, torchvision_root, write_npz)

__all__ = ["MNIST_NPZ_SHA256", "MNIST_SHAPES", "LAROCHELLE_URL", "LAROCHELLE_SHA256", "BINARIZED_SIZES",
           "BINARIZATION_SEED", "BINARIZED_SAMPLED_SHA256", "load_mnist", "dynamic_binarize", "torchvision_mnist",
           "binarized_mnist", "binarized_mnist_source", "sample_static_binarization"]

#: sha256 of the reference builds of ``get_datasets.sh`` (copied from that script). Its uncompressed
#: npz files have fixed zip metadata, so their bytes are reproducible; ``flowbook.data.files.write_npz``
#: writes the same layout, so a cache built from torchvision's download has the same sha256.
MNIST_NPZ_SHA256 = "14d9ad8534618e489ae7fe6277dfb8b8cae9c988631718856cbd4f9018ae7ca5"

MNIST_SHAPES = {"x_train": (60000, 28, 28), "y_train": (60000,), "x_test": (10000, 28, 28), "y_test": (10000,)}

#: Canonical location of the Larochelle & Murray static binarization (for users who are online), with
#: ``{split}`` for ``train``, ``valid`` or ``test``.
LAROCHELLE_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{split}.amat"
#: sha256 of the three ``.amat`` files, by split (``"train"``, ``"valid"``, ``"test"``), as published
#: in TensorFlow Datasets' URL checksum list (``tensorflow_datasets/url_checksums/binarized_mnist.txt``);
#: a downloaded file is checked against them.
LAROCHELLE_SHA256 = {
    "train": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    "valid": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    "test": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
}
BINARIZED_SIZES = {"train": 50000, "valid": 10000, "test": 10000}

#: Seed of the offline static binarization (the paper's year); see :func:`sample_static_binarization`.
BINARIZATION_SEED = 2015
#: sha256 of ``binarized_mnist_sampled_seed2015.npz`` as written by :func:`sample_static_binarization`
#: from the verified MNIST; checked on every load.
BINARIZED_SAMPLED_SHA256 = "4151e1f8ea2d4f3deed7b58f3dbc98005f8480afadef5e0b392ee5ec07d24831"


def _link_mnist_idx(root: Path) -> None:
    """Let torchvision's MNIST read the idx files kept by ``get_datasets.sh --keep-raw`` (offline)."""
    idx, raw = root / "mnist-idx", torchvision_root(root) / "MNIST" / "raw"
    if not idx.is_dir():
        return
    raw.mkdir(parents=True, exist_ok=True)
    for f in idx.iterdir():
        if not (raw / f.name).exists():
            (raw / f.name).symlink_to(f.resolve())


def _mnist_from_torchvision(root: Path) -> Path:
    """Download MNIST with torchvision (which checks its md5 sums) and cache it as ``mnist.npz``."""
    from torchvision.datasets import MNIST

    tv = torchvision_root(root)
    parts = []
    for train, split in ((True, "train"), (False, "test")):
        ds = MNIST(str(tv), train=train, download=True)
        parts += [(f"x_{split}", ds.data.numpy().astype(np.uint8)), (f"y_{split}", ds.targets.numpy().astype(np.uint8))]
    path = root / "mnist.npz"
    write_npz(path, parts)
    record_verified(path)  # the arrays come from torchvision's checked download
    return path


def load_mnist(split: Literal["train", "test"], root: str | os.PathLike | None = None,
               download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST grey levels: ``(images, labels)``, uint8 ``(N, 28, 28)`` with values 0..255 and int64 ``(N,)``.

    Reads ``mnist.npz`` from the data root (60 000 train / 10 000 test). When it is missing and
    ``download`` is true, torchvision downloads MNIST into ``<root>/torchvision`` and the npz is cached.
    """
    root = data_root(root)
    return load_split(root, "mnist.npz", "MNIST", MNIST_NPZ_SHA256, MNIST_SHAPES,
                       lambda: _mnist_from_torchvision(root), split, download)


def dynamic_binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Dynamic binarization: a fresh Bernoulli sample with success probability grey level / 255.

    Call it on every minibatch of every epoch (the alternative to a static binarization, which is drawn
    once). ``x`` holds grey levels 0..255 (any shape, any dtype); returns float32 zeros and ones.
    ``generator`` must live on ``x``'s device; None uses torch's global generator.
    """
    p = x.to(torch.float32) / 255.0
    return torch.bernoulli(p, generator=generator)


def torchvision_mnist(split: Literal["train", "test"], root: str | os.PathLike | None = None,
                      dynamic_binarization: bool = False, download: bool = True):
    """The canonical ``torchvision.datasets.MNIST``, for comparison with the tensors above.

    Items are ``(image, label)`` with ``image`` a float32 tensor ``(1, 28, 28)``: grey levels / 255, or,
    with ``dynamic_binarization``, a fresh Bernoulli sample of them each time an item is read (torch's
    global generator, seeded by ``flowbook.notebook.setup``). Offline, the idx files kept by
    ``get_datasets.sh --keep-raw`` (``<root>/mnist-idx``) are linked into torchvision's folder.
    """
    from torchvision.datasets import MNIST

    split = split_name(split, ("train", "test"))
    root = data_root(root)
    _link_mnist_idx(root)

    def transform(img) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).unsqueeze(0)
        return dynamic_binarize(x) if dynamic_binarization else x.float() / 255.0

    try:
        return MNIST(str(torchvision_root(root)), train=split == "train", download=download, transform=transform)
    except Exception as err:
        raise DataFileError(f"torchvision's MNIST is not available in {torchvision_root(root)} ({err}); "
                            f"build the data root with `bash ../shared/datasets/{GET_DATASETS} {root} --keep-raw` "
                            f"or go online and pass download=True.") from err


# --- static binarized MNIST ------------------------------------------------------------------------

def _sampled_name(seed: int) -> str:
    return f"binarized_mnist_sampled_seed{seed}.npz"


def _amat_paths(root: Path) -> dict[str, Path]:
    return {s: root / f"binarized_mnist_{s}.amat" for s in BINARIZED_SIZES}


def binarized_mnist_source(root: str | os.PathLike | None = None) -> str:
    """Which static binarization ``binarized_mnist(..., source="auto")`` uses with this data root:
    ``"larochelle-murray"`` when the three ``.amat`` files are present, else ``"sampled-seed-2015"``.

    Put this string next to every number computed on binarized MNIST.
    """
    root = data_root(root)
    present = [p for p in _amat_paths(root).values() if p.is_file()]
    if len(present) == 3:
        return "larochelle-murray"
    if present:
        missing = sorted(str(p) for p in _amat_paths(root).values() if not p.is_file())
        raise DataFileError(
            f"only some Larochelle-Murray files are in {root} (missing: {', '.join(missing)}); mixing "
            f"binarizations across splits would be wrong. Download the missing files from "
            f"{LAROCHELLE_URL} or delete the present ones to use the sampled substitute.")
    return f"sampled-seed-{BINARIZATION_SEED}"


def _parse_amat(path: Path, n: int) -> np.ndarray:
    """Parse an ``.amat`` file: one image a line, 784 values '0'/'1' separated by single spaces."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size != n * 784 * 2:
        raise DataFileError(f"{path} has {raw.size} bytes, expected {n * 784 * 2}. Delete it and download it "
                            f"again from {LAROCHELLE_URL.format(split=path.stem.split('_')[-1])}.")
    digits, seps = raw[0::2].reshape(n, 784), raw[1::2].reshape(n, 784)
    if not (np.isin(digits, (ord("0"), ord("1"))).all() and (seps[:, :-1] == ord(" ")).all()
            and (seps[:, -1] == ord("\n")).all()):
        raise DataFileError(f"{path} is not in the .amat layout (784 space-separated 0/1 a line). Delete it and "
                            f"download it again.")
    return digits - np.uint8(ord("0"))


def _download_larochelle(root: Path, split: str) -> Path:
    url, path = LAROCHELLE_URL.format(split=split), _amat_paths(root)[split]
    fd, tmp = tempfile.mkstemp(dir=root, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
        check_sha256(Path(tmp), {LAROCHELLE_SHA256[split]}, f"try the download of {url} again")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _larochelle(split: str, root: Path, download: bool) -> np.ndarray:
    path = _amat_paths(root)[split]
    url = LAROCHELLE_URL.format(split=split)
    if not path.is_file():
        if not download:
            raise DataFileError(f"{path} is missing: download it from {url}, or use source='auto' for the "
                                f"sampled substitute.")
        try:
            _download_larochelle(root, split)
        except OSError as err:
            raise DataFileError(f"{path} is missing and could not be downloaded from {url} ({err}). Offline, "
                                f"use source='auto' (the sampled substitute, labelled "
                                f"'sampled-seed-{BINARIZATION_SEED}').") from err
    check_sha256(path, {LAROCHELLE_SHA256[split]}, f"download it again from {url}")
    return _parse_amat(path, BINARIZED_SIZES[split])


def sample_static_binarization(images: np.ndarray, seed: int = BINARIZATION_SEED) -> np.ndarray:
    """Draw one Bernoulli(grey level / 255) sample per pixel, reproducibly across numpy versions.

    ``images``: uint8 grey levels of shape ``(N, ...)``; returns uint8 0/1 of shape ``(N, prod(...))``.

    The random numbers are the raw 64-bit outputs of ``numpy.random.PCG64(seed)`` (an algorithm whose
    output is fixed, unlike the distribution methods of ``numpy.random.Generator``), consumed in
    row-major pixel order. A pixel of grey level ``x`` is 1 iff ``(r >> 11) * 255 < x * 2**53``, an exact
    integer comparison, i.e. with probability ``ceil(x 2^53 / 255) / 2^53`` = x / 255 up to 2^-53
    (exactly 0 for x = 0 and 1 for x = 255).
    """
    flat = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), -1)
    bitgen = np.random.PCG64(seed)
    out = np.empty(flat.shape, dtype=np.uint8)
    chunk = 4096  # rows at a time: bounded memory (4096 x 784 x 8 bytes = 26 MB)
    for i in range(0, len(flat), chunk):
        x = flat[i:i + chunk]
        r = bitgen.random_raw(x.size).reshape(x.shape) >> np.uint64(11)
        out[i:i + chunk] = r * np.uint64(255) < x.astype(np.uint64) << np.uint64(53)
    return out


def _build_sampled(root: Path, seed: int, download: bool) -> Path:
    """Write ``binarized_mnist_sampled_seed<seed>.npz``: the 60 000 training images of MNIST followed
    by its 10 000 test images, binarized with one PCG64 stream; train = the first 50 000 training
    images, valid = the last 10 000, test = the MNIST test set (the Larochelle-Murray split sizes)."""
    x_train, _ = load_mnist("train", root, download=download)
    x_test, _ = load_mnist("test", root, download=download)
    b = sample_static_binarization(np.concatenate([x_train.numpy(), x_test.numpy()]), seed)
    n_train, n_valid = BINARIZED_SIZES["train"], BINARIZED_SIZES["valid"]
    if len(x_train) != n_train + n_valid:
        raise DataFileError(f"MNIST has {len(x_train)} training images, expected {n_train + n_valid}")
    path = root / _sampled_name(seed)
    write_npz(path, [("x_train", b[:n_train]), ("x_valid", b[n_train:n_train + n_valid]),
                      ("x_test", b[n_train + n_valid:])])
    return path


def _sampled(split: str, root: Path, download: bool) -> np.ndarray:
    path = root / _sampled_name(BINARIZATION_SEED)
    if not path.is_file():
        _build_sampled(root, BINARIZATION_SEED, download)
    fix = (f"call binarized_mnist again to rebuild it from mnist.npz (if the rebuilt file is rejected too, "
           f"this numpy's PCG64 or the verified MNIST differ from the reference build: report it)")
    check_sha256(path, {BINARIZED_SAMPLED_SHA256}, fix)
    with np.load(path, allow_pickle=False) as npz:
        x = npz[f"x_{split}"]
    check_arrays(path, {f"x_{split}": x}, {f"x_{split}": (BINARIZED_SIZES[split], 784)}, fix)
    return x


def binarized_mnist(split: Literal["train", "valid", "test"], root: str | os.PathLike | None = None,
                    source: Literal["auto", "larochelle-murray", "sampled"] = "auto",
                    download: bool = True) -> torch.Tensor:
    """Statically binarized MNIST as float32 zeros and ones, shape ``(N, 784)``, N = 50 000 / 10 000 / 10 000.

    This is the data of the paper's Section 6.2 (Table 2: -ln p(x) of the deep latent Gaussian model
    with planar and NICE flows). ``source``:

    * ``"larochelle-murray"``: the canonical ``.amat`` files; downloaded from :data:`LAROCHELLE_URL`
      when missing and ``download`` is true, and checked against :data:`LAROCHELLE_SHA256`;
    * ``"sampled"``: the offline substitute ``binarized_mnist_sampled_seed2015.npz``, built from the
      verified MNIST on first use (about 3 s) and checked against :data:`BINARIZED_SAMPLED_SHA256`;
    * ``"auto"``: the ``.amat`` files when all three are in the data root, else the sampled substitute.

    :func:`binarized_mnist_source` says which one ``"auto"`` picks; report it with every number.
    """
    split = split_name(split, tuple(BINARIZED_SIZES))
    root = data_root(root)
    if source == "auto":
        source = "larochelle-murray" if binarized_mnist_source(root) == "larochelle-murray" else "sampled"
    if source == "larochelle-murray":
        x = _larochelle(split, root, download)
    elif source == "sampled":
        x = _sampled(split, root, download)
    else:
        raise ValueError(f"source must be 'auto', 'larochelle-murray' or 'sampled', got {source!r}")
    return torch.from_numpy(x).to(torch.float32)

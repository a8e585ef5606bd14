"""Datasets for the paper's image experiments (Section 6.2): binarized MNIST (Table 2) and CIFAR-10 (Table 3).

Everything is read from one *data root* (see :func:`data_root`). On the project's offline machines the
root is built by ``get_datasets.sh`` (shared with the book), which writes ``mnist.npz`` and
``cifar10.npz`` from verified copies of the original files. Online users need nothing: when a file is
missing, torchvision downloads the dataset and the same ``.npz`` layout is cached in the root.

Every file is checked before use (sha256 against the constants below, then shapes and dtypes), and an
unusable file raises an error that names it and says what to do.

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

import hashlib
import math
import os
import shutil
import struct
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
import torch

__all__ = [
    "data_root", "load_mnist", "dynamic_binarize", "torchvision_mnist",
    "binarized_mnist", "binarized_mnist_source", "sample_static_binarization",
    "load_cifar10", "cifar10_patches", "to_unit_interval", "unit_interval_log_jacobian",
    "pixel_space_log_density", "bits_per_dim", "batches", "DataFileError",
]

# --- constants -------------------------------------------------------------------------------------

#: sha256 of the reference builds of ``get_datasets.sh`` (copied from that script). Its uncompressed
#: npz files have fixed zip metadata, so their bytes are reproducible; ``_write_npz`` writes the same
#: layout, so a cache built from torchvision's download has the same sha256.
MNIST_NPZ_SHA256 = "14d9ad8534618e489ae7fe6277dfb8b8cae9c988631718856cbd4f9018ae7ca5"
CIFAR10_NPZ_SHA256 = "bc3dbefbeb24a854ff11a51c1c5a821c1b3876a0c44139eb94140135956c2536"

MNIST_SHAPES = {"x_train": (60000, 28, 28), "y_train": (60000,), "x_test": (10000, 28, 28), "y_test": (10000,)}
CIFAR10_SHAPES = {"x_train": (50000, 32, 32, 3), "y_train": (50000,),
                  "x_test": (10000, 32, 32, 3), "y_test": (10000,)}

#: Canonical location of the Larochelle & Murray static binarization (for users who are online).
LAROCHELLE_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{split}.amat"
#: sha256 and sizes of the three ``.amat`` files, as published in TensorFlow Datasets' URL checksum
#: list (``tensorflow_datasets/url_checksums/binarized_mnist.txt``); not re-verified here (offline).
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

#: Seeds of the CIFAR-10 patch sets (:func:`cifar10_patches`); the test set is fixed by its seed.
CIFAR10_TRAIN_PATCH_SEED = 0
CIFAR10_TEST_PATCH_SEED = 2015

GET_DATASETS = "get_datasets.sh"  # ../shared/datasets/get_datasets.sh, seen from the repository root
_VERIFIED_LIST = ".verified-sha256"  # written by get_datasets.sh: hashes of verified local builds


class DataFileError(RuntimeError):
    """A dataset file is missing, corrupt or has the wrong layout; the message says what to do."""


# --- data root -------------------------------------------------------------------------------------

def data_root(root: str | os.PathLike | None = None) -> Path:
    """The directory holding the datasets, created if needed.

    Order: the ``root`` argument, else the environment variable ``FLOWBOOK_DATA``, else
    ``<repo>/data/datasets`` when flowbook runs from a checkout (a ``pyproject.toml`` next to the
    package), else ``./data/datasets`` in the working directory (e.g. ``/content`` in Colab).
    """
    if root is None:
        root = os.environ.get("FLOWBOOK_DATA") or None
    if root is None:
        repo = Path(__file__).resolve().parent.parent
        base = repo if (repo / "pyproject.toml").is_file() else Path.cwd()
        root = base / "data" / "datasets"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _offline_hint(root: Path) -> str:
    return (f"offline, build it from the repository root with `bash ../shared/datasets/{GET_DATASETS} {root}` "
            f"(see CONTRIBUTING.md); online, call again with download=True so torchvision downloads it")


# --- integrity -------------------------------------------------------------------------------------

# (path, size, mtime_ns) -> sha256, so a file is hashed once per process unless it changes.
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def _locally_verified(path: Path) -> set[str]:
    """Hashes that ``get_datasets.sh`` (or this module) recorded as verified builds of ``path`` here."""
    listing = path.parent / _VERIFIED_LIST
    if not listing.is_file():
        return set()
    out = set()
    for line in listing.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] == path.name:
            out.add(parts[0])
    return out


def _record_verified(path: Path) -> None:
    """Add ``path``'s hash to the verified list (same format as get_datasets.sh)."""
    listing = path.parent / _VERIFIED_LIST
    lines = listing.read_text().splitlines() if listing.is_file() else []
    lines = [ln for ln in lines if ln.split()[-1:] != [path.name]]
    lines.append(f"{_sha256(path)}  {path.name}")
    tmp = listing.with_name(listing.name + f".tmp{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, listing)


def _check_sha256(path: Path, expected: set[str], fix: str) -> None:
    got = _sha256(path)
    if got not in expected:
        raise DataFileError(
            f"{path} is corrupt or not the expected build: sha256 {got}, expected "
            f"{' or '.join(sorted(expected))}. Delete {path} and {fix}.")


def _check_arrays(path: Path, arrays: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]],
                  fix: str) -> None:
    for name, shape in shapes.items():
        if name not in arrays:
            raise DataFileError(f"{path} lacks the array {name!r}. Delete {path} and {fix}.")
        a = arrays[name]
        if a.dtype != np.uint8 or a.shape != shape:
            raise DataFileError(f"{path}: {name} is {a.dtype} {a.shape}, expected uint8 {shape}. "
                                f"Delete {path} and {fix}.")


def _load_npz(path: Path, sha256: str, shapes: dict[str, tuple[int, ...]], fix: str) -> dict[str, np.ndarray]:
    """Load the arrays named in ``shapes`` from a verified npz (sha256 of the whole file first, then
    shapes and dtypes); the other arrays are not read."""
    _check_sha256(path, {sha256} | _locally_verified(path), fix)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in shapes if name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:  # a locally "verified" file can still be bad
        raise DataFileError(f"{path} cannot be read ({err}). Delete {path} and {fix}.") from err
    _check_arrays(path, arrays, shapes, fix)
    return arrays


def _npy_bytes(a: np.ndarray) -> bytes:
    """``.npy`` format 1.0 with numpy's header layout spelled out, so the bytes do not depend on the
    installed numpy version (the same layout as get_datasets.sh)."""
    a = np.ascontiguousarray(a)
    header = "{'descr': '%s', 'fortran_order': False, 'shape': %r, }" % (a.dtype.str, tuple(a.shape))
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"  # pad: data starts 64-aligned
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1") + a.tobytes()


def _write_npz(path: Path, arrays: Sequence[tuple[str, np.ndarray]]) -> None:
    """Write an uncompressed npz with fixed zip metadata (reproducible bytes), atomically: a
    concurrent reader sees either no file or the whole file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            for name, a in arrays:
                info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type, info.create_system, info.external_attr = zipfile.ZIP_STORED, 3, 0o644 << 16
                z.writestr(info, _npy_bytes(a))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# --- MNIST grey levels -----------------------------------------------------------------------------

def _torchvision_root(root: Path) -> Path:
    return root / "torchvision"


def _link_mnist_idx(root: Path) -> None:
    """Let torchvision's MNIST read the idx files kept by ``get_datasets.sh --keep-raw`` (offline)."""
    idx, raw = root / "mnist-idx", _torchvision_root(root) / "MNIST" / "raw"
    if not idx.is_dir():
        return
    raw.mkdir(parents=True, exist_ok=True)
    for f in idx.iterdir():
        if not (raw / f.name).exists():
            (raw / f.name).symlink_to(f.resolve())


def _mnist_from_torchvision(root: Path) -> Path:
    """Download MNIST with torchvision (which checks its md5 sums) and cache it as ``mnist.npz``."""
    from torchvision.datasets import MNIST

    tv = _torchvision_root(root)
    parts = []
    for train, split in ((True, "train"), (False, "test")):
        ds = MNIST(str(tv), train=train, download=True)
        parts += [(f"x_{split}", ds.data.numpy().astype(np.uint8)), (f"y_{split}", ds.targets.numpy().astype(np.uint8))]
    path = root / "mnist.npz"
    _write_npz(path, parts)
    _record_verified(path)  # the arrays come from torchvision's checked download
    return path


def _split_name(split: str, allowed: Sequence[str]) -> str:
    if split not in allowed:
        raise ValueError(f"split must be one of {', '.join(map(repr, allowed))}, got {split!r}")
    return split


def _ensure_npz(path: Path, download: bool, fetch: Callable[[], None], name: str, fix: str) -> None:
    """Make sure ``path`` exists: if it is missing, build it with ``fetch`` (a torchvision download),
    or raise an error that names the file and says what to do."""
    if path.is_file():
        return
    if not download:
        raise DataFileError(f"{path} is missing: {fix}.")
    try:
        fetch()
    except Exception as err:  # offline: torchvision raises RuntimeError / URLError
        raise DataFileError(f"{path} is missing and torchvision could not download {name} ({err}); "
                            f"{fix}.") from err


def _load_split(root: Path, filename: str, name: str, sha256: str, shapes: dict, fetch: Callable[[], None],
                split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, int64 labels)`` of one split of an npz cache in the shared layout (x_/y_ train/test),
    fetching the file with ``fetch`` when it is missing and checking its sha256 and shapes."""
    split = _split_name(split, ("train", "test"))
    path, fix = root / filename, _offline_hint(root)
    _ensure_npz(path, download, fetch, name, fix)
    arrays = _load_npz(path, sha256, {k: shapes[k] for k in (f"x_{split}", f"y_{split}")}, fix)
    return torch.from_numpy(arrays[f"x_{split}"]), torch.from_numpy(arrays[f"y_{split}"]).long()


def load_mnist(split: Literal["train", "test"], root: str | os.PathLike | None = None,
               download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST grey levels: ``(images, labels)``, uint8 ``(N, 28, 28)`` with values 0..255 and int64 ``(N,)``.

    Reads ``mnist.npz`` from the data root (60 000 train / 10 000 test). When it is missing and
    ``download`` is true, torchvision downloads MNIST into ``<root>/torchvision`` and the npz is cached.
    """
    root = data_root(root)
    return _load_split(root, "mnist.npz", "MNIST", MNIST_NPZ_SHA256, MNIST_SHAPES,
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

    split = _split_name(split, ("train", "test"))
    root = data_root(root)
    _link_mnist_idx(root)

    def transform(img) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).unsqueeze(0)
        return dynamic_binarize(x) if dynamic_binarization else x.float() / 255.0

    try:
        return MNIST(str(_torchvision_root(root)), train=split == "train", download=download, transform=transform)
    except Exception as err:
        raise DataFileError(f"torchvision's MNIST is not available in {_torchvision_root(root)} ({err}); "
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
        _check_sha256(Path(tmp), {LAROCHELLE_SHA256[split]}, f"try the download of {url} again")
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
    _check_sha256(path, {LAROCHELLE_SHA256[split]}, f"download it again from {url}")
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
    _write_npz(path, [("x_train", b[:n_train]), ("x_valid", b[n_train:n_train + n_valid]),
                      ("x_test", b[n_train + n_valid:])])
    return path


def _sampled(split: str, root: Path, download: bool) -> np.ndarray:
    path = root / _sampled_name(BINARIZATION_SEED)
    if not path.is_file():
        _build_sampled(root, BINARIZATION_SEED, download)
    fix = (f"call binarized_mnist again to rebuild it from mnist.npz (if the rebuilt file is rejected too, "
           f"this numpy's PCG64 or the verified MNIST differ from the reference build: report it)")
    _check_sha256(path, {BINARIZED_SAMPLED_SHA256}, fix)
    with np.load(path, allow_pickle=False) as npz:
        x = npz[f"x_{split}"]
    _check_arrays(path, {f"x_{split}": x}, {f"x_{split}": (BINARIZED_SIZES[split], 784)}, fix)
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
    split = _split_name(split, tuple(BINARIZED_SIZES))
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


# --- CIFAR-10 --------------------------------------------------------------------------------------

def _cifar10_from_torchvision(root: Path) -> Path:
    """Download CIFAR-10 with torchvision (md5-checked) and cache it as ``cifar10.npz`` (HWC uint8)."""
    from torchvision.datasets import CIFAR10

    tv = _torchvision_root(root)
    parts = []
    for train, split in ((True, "train"), (False, "test")):
        ds = CIFAR10(str(tv), train=train, download=True)
        parts += [(f"x_{split}", np.asarray(ds.data, dtype=np.uint8)),
                  (f"y_{split}", np.asarray(ds.targets, dtype=np.uint8))]
    path = root / "cifar10.npz"
    _write_npz(path, parts)
    _record_verified(path)
    return path


#: CIFAR-10 class names, in label order.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def load_cifar10(split: Literal["train", "test"], root: str | os.PathLike | None = None,
                 download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10: ``(images, labels)``, uint8 ``(N, 32, 32, 3)`` in HWC order and int64 ``(N,)``.

    Reads ``cifar10.npz`` from the data root (50 000 train / 10 000 test); when it is missing and
    ``download`` is true, torchvision downloads CIFAR-10 into ``<root>/torchvision`` and the npz is cached.
    Labels index :data:`CIFAR10_CLASSES`.
    """
    root = data_root(root)
    return _load_split(root, "cifar10.npz", "CIFAR-10", CIFAR10_NPZ_SHA256, CIFAR10_SHAPES,
                       lambda: _cifar10_from_torchvision(root), split, download)


def cifar10_patches(split: Literal["train", "test"], n: int, size: int = 8, seed: int | None = None,
                    root: str | os.PathLike | None = None, images: torch.Tensor | None = None) -> torch.Tensor:
    """``n`` random ``size x size`` patches of CIFAR-10 images, uint8 ``(n, 3, size, size)`` (CHW).

    Drawing (with ``g = torch.Generator().manual_seed(seed)``, in this order): the image indices
    ``torch.randint(N, (n,), generator=g)``, then the top rows and the left columns of the patches,
    each ``torch.randint(32 - size + 1, (n,), generator=g)``: image and corner uniformly, independently,
    with replacement. Patches of the test split come from test images only, and with the default seed
    :data:`CIFAR10_TEST_PATCH_SEED` they form a fixed test set (for a given ``n`` and ``size``); the
    training default is :data:`CIFAR10_TRAIN_PATCH_SEED` (pass a new seed per epoch for fresh patches).
    ``images`` (uint8 ``(N, 32, 32, 3)``) skips reloading the split on repeated calls.
    """
    split = _split_name(split, ("train", "test"))
    if images is None:
        images, _ = load_cifar10(split, root)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {tuple(images.shape)}")
    N, H, W, _ = images.shape
    if not (1 <= size <= min(H, W)) or n < 0:
        raise ValueError(f"need 1 <= size <= {min(H, W)} and n >= 0, got size={size}, n={n}")
    if seed is None:
        seed = CIFAR10_TEST_PATCH_SEED if split == "test" else CIFAR10_TRAIN_PATCH_SEED
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(N, (n,), generator=g)
    top = torch.randint(H - size + 1, (n,), generator=g)
    left = torch.randint(W - size + 1, (n,), generator=g)
    offsets = torch.arange(size)
    rows = (top[:, None] + offsets)[:, :, None]   # (n, size, 1)
    cols = (left[:, None] + offsets)[:, None, :]  # (n, 1, size)
    patches = images[idx[:, None, None], rows, cols]  # (n, size, size, 3)
    return patches.permute(0, 3, 1, 2).contiguous()


def to_unit_interval(x: torch.Tensor, eps: float = 1e-4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Map 8-bit pixels into ``[eps, 1 - eps]``: ``y = eps + (1 - 2 eps) (x + u) / 256``, u ~ U[0, 1).

    The uniform dequantization ``(x + u) / 256`` (not ``x / 255``) turns the discrete pixels into a
    density on ``[0, 256)^D``; then ``E_u ln p(x + u)`` is a lower bound on the discrete ``ln P(x)``
    (Theis et al., 2016), so likelihoods are comparable with the literature. Keeping ``y`` away from
    0 and 1 by ``eps`` keeps ``logit(y)`` finite for flows defined on the real line. Pass a seeded
    ``generator`` (on ``x``'s device) for reproducible test likelihoods. Returns float32, same shape.

    The map from pixel space is affine per dimension, so a density of ``y`` converts back with
    :func:`pixel_space_log_density`.
    """
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"eps must lie in [0, 0.5), got {eps}")
    u = torch.rand(x.shape, generator=generator, device=x.device)
    return eps + (1.0 - 2.0 * eps) * (x.to(torch.float32) + u) / 256.0


def unit_interval_log_jacobian(dim: int, eps: float = 1e-4) -> float:
    """``D ln(1 - 2 eps)``: the log-Jacobian determinant of the affine map ``[0, 1]^D -> [eps, 1 - eps]^D``,
    ``v -> eps + (1 - 2 eps) v``, used by :func:`to_unit_interval`."""
    return dim * math.log1p(-2.0 * eps)


def pixel_space_log_density(log_p_unit: torch.Tensor | float, dim: int, eps: float = 1e-4) -> torch.Tensor | float:
    """Log-density of the dequantized pixels ``x + u`` in ``[0, 256)^D`` from the log-density of
    ``y = to_unit_interval(x)``: change of variables through ``y = eps + (1 - 2 eps)(x + u) / 256``,
    ``ln p(x + u) = ln p(y) + D ln(1 - 2 eps) - D ln 256``."""
    return log_p_unit + unit_interval_log_jacobian(dim, eps) - dim * math.log(256.0)


def bits_per_dim(log_p_pixel: torch.Tensor | float, dim: int) -> torch.Tensor | float:
    """``-ln p(x + u) / (D ln 2)``: the usual CIFAR-10 score, from a pixel-space log-density in nats."""
    return -log_p_pixel / (dim * math.log(2.0))


# --- minibatches -----------------------------------------------------------------------------------

def batches(x: torch.Tensor | Sequence[torch.Tensor], batch_size: int, generator: torch.Generator | None = None,
            shuffle: bool = True, drop_last: bool = True) -> Iterator[torch.Tensor | tuple[torch.Tensor, ...]]:
    """One epoch of minibatches from pre-loaded tensors (no DataLoader: indexing a tensor is faster).

    ``x`` is a tensor, or a sequence of tensors with the same first dimension (e.g. images and labels),
    in which case tuples are yielded. With ``shuffle`` the order is ``torch.randperm(N, generator=generator)``
    (a CPU generator; None uses torch's global generator, seeded by ``flowbook.notebook.setup``).
    ``drop_last`` drops the last, smaller batch so every gradient step averages the same number of terms.
    Batches stay on ``x``'s device.
    """
    single = isinstance(x, torch.Tensor)
    tensors = (x,) if single else tuple(x)
    if not tensors:
        raise ValueError("batches needs at least one tensor")
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise ValueError(f"tensors have different lengths {[t.shape[0] for t in tensors]}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if drop_last and batch_size > n:
        raise ValueError(f"batch_size {batch_size} > {n} examples with drop_last=True would yield no batch")
    stop = n - n % batch_size if drop_last else n
    order = torch.randperm(n, generator=generator) if shuffle else None
    # one copy of the permutation per device, moved once per epoch rather than once per batch
    orders = {t.device: order.to(t.device) for t in tensors} if order is not None else {}
    for i in range(0, stop, batch_size):
        if order is None:
            out = tuple(t[i:i + batch_size] for t in tensors)  # views, no copy
        else:
            out = tuple(t[orders[t.device][i:i + batch_size]] for t in tensors)
        yield out[0] if single else out

"""Tests for flowbook.data (the package and its modules): fast ones on tiny synthetic files, and checks of the real data root when
``FLOWBOOK_DATA`` (or the default root) holds the files built by get_datasets.sh."""
from __future__ import annotations

import hashlib
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flowbook import data
from flowbook.data import cifar10 as data_cifar10
from flowbook.data import files as data_files
from flowbook.data import mnist as data_mnist


# --- helpers ---------------------------------------------------------------------------------------

def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def tiny_mnist(tmp_path, monkeypatch):
    """A synthetic MNIST (12 train + 4 test images of random grey levels) in tmp_path, with the
    module's expected shapes and checksum set to match it."""
    rng = np.random.default_rng(0)
    arrays = [("x_train", rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)),
              ("y_train", rng.integers(0, 10, 12, dtype=np.uint8)),
              ("x_test", rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)),
              ("y_test", rng.integers(0, 10, 4, dtype=np.uint8))]
    path = tmp_path / "mnist.npz"
    data_files.write_npz(path, arrays)
    monkeypatch.setattr(data_mnist, "MNIST_SHAPES", {k: v.shape for k, v in arrays})
    monkeypatch.setattr(data_mnist, "MNIST_NPZ_SHA256", _sha(path))
    monkeypatch.setattr(data_mnist, "BINARIZED_SIZES", {"train": 8, "valid": 4, "test": 4})
    return tmp_path, dict(arrays)


@pytest.fixture
def tiny_cifar(tmp_path, monkeypatch):
    """A synthetic CIFAR-10 (6 train + 3 test images) in tmp_path, accepted through the
    ``.verified-sha256`` list, as get_datasets.sh records local builds."""
    rng = np.random.default_rng(1)
    arrays = [("x_train", rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)),
              ("y_train", rng.integers(0, 10, 6, dtype=np.uint8)),
              ("x_test", rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)),
              ("y_test", rng.integers(0, 10, 3, dtype=np.uint8))]
    path = tmp_path / "cifar10.npz"
    data_files.write_npz(path, arrays)
    (tmp_path / ".verified-sha256").write_text(f"{_sha(path)}  cifar10.npz\n")
    monkeypatch.setattr(data_cifar10, "CIFAR10_SHAPES", {k: v.shape for k, v in arrays})
    return tmp_path, dict(arrays)


def _real_root() -> Path | None:
    root = Path(os.environ["FLOWBOOK_DATA"]) if os.environ.get("FLOWBOOK_DATA") else \
        Path(data_files.__file__).resolve().parents[2] / "data" / "datasets"
    return root if (root / "mnist.npz").is_file() else None


REAL = _real_root()
needs_real = pytest.mark.skipif(REAL is None, reason="no mnist.npz in FLOWBOOK_DATA (run get_datasets.sh)")


# --- data root -------------------------------------------------------------------------------------

def test_data_root_order(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWBOOK_DATA", str(tmp_path / "env"))
    assert data.data_root(tmp_path / "arg") == tmp_path / "arg" and (tmp_path / "arg").is_dir()
    assert data.data_root() == tmp_path / "env" and (tmp_path / "env").is_dir()
    monkeypatch.delenv("FLOWBOOK_DATA")
    assert data.data_root().parts[-2:] == ("data", "datasets")


# --- MNIST -----------------------------------------------------------------------------------------

def test_npz_writer_is_byte_reproducible(tmp_path):
    a = [("x", np.arange(12, dtype=np.uint8).reshape(3, 4))]
    data_files.write_npz(tmp_path / "a.npz", a)
    data_files.write_npz(tmp_path / "b.npz", a)
    assert _sha(tmp_path / "a.npz") == _sha(tmp_path / "b.npz")
    with np.load(tmp_path / "a.npz") as z:
        np.testing.assert_array_equal(z["x"], a[0][1])


def test_load_mnist_layout(tiny_mnist):
    root, arrays = tiny_mnist
    for split in ("train", "test"):
        x, y = data.load_mnist(split, root, download=False)
        assert x.dtype == torch.uint8 and y.dtype == torch.int64
        np.testing.assert_array_equal(x.numpy(), arrays[f"x_{split}"])
        np.testing.assert_array_equal(y.numpy(), arrays[f"y_{split}"])
    with pytest.raises(ValueError, match="split"):
        data.load_mnist("valid", root)


def test_missing_file_error_names_file_and_fix(tmp_path):
    with pytest.raises(data.DataFileError) as err:
        data.load_mnist("train", tmp_path, download=False)
    assert str(tmp_path / "mnist.npz") in str(err.value) and "get_datasets.sh" in str(err.value)
    with pytest.raises(data.DataFileError, match="cifar10.npz"):
        data.load_cifar10("test", tmp_path, download=False)


def test_corrupt_file_error(tiny_mnist):
    root, _ = tiny_mnist
    path = root / "mnist.npz"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # one flipped byte in the last image
    path.write_bytes(bytes(raw))
    with pytest.raises(data.DataFileError) as err:
        data.load_mnist("test", root, download=False)
    msg = str(err.value)
    assert str(path) in msg and "sha256" in msg and "Delete" in msg


def test_wrong_shape_error(tiny_mnist, monkeypatch):
    root, _ = tiny_mnist
    monkeypatch.setattr(data_mnist, "MNIST_SHAPES", {**data_mnist.MNIST_SHAPES, "x_train": (60000, 28, 28)})
    with pytest.raises(data.DataFileError, match=r"x_train is uint8 \(12, 28, 28\), expected uint8 \(60000, 28, 28\)"):
        data.load_mnist("train", root, download=False)


def test_dynamic_binarize():
    x = torch.tensor([0, 64, 255], dtype=torch.uint8).repeat(20000, 1)
    b1 = data.dynamic_binarize(x, torch.Generator().manual_seed(3))
    b2 = data.dynamic_binarize(x, torch.Generator().manual_seed(3))
    assert b1.dtype == torch.float32 and torch.equal(b1, b2)
    assert set(b1.unique().tolist()) <= {0.0, 1.0}
    assert b1[:, 0].sum() == 0 and b1[:, 2].sum() == len(x)
    p = 64 / 255
    assert abs(b1[:, 1].mean().item() - p) < 5 * math.sqrt(p * (1 - p) / len(x))
    assert not torch.equal(b1, data.dynamic_binarize(x, torch.Generator().manual_seed(4)))


# --- static binarization ---------------------------------------------------------------------------

def test_sample_static_binarization_deterministic_and_calibrated():
    x = np.tile(np.array([0, 1, 64, 128, 254, 255], dtype=np.uint8), (30000, 1))
    b = data.sample_static_binarization(x, seed=7)
    assert b.dtype == np.uint8 and b.shape == x.shape and set(np.unique(b)) <= {0, 1}
    np.testing.assert_array_equal(b, data.sample_static_binarization(x, seed=7))
    assert not np.array_equal(b, data.sample_static_binarization(x, seed=8))
    assert b[:, 0].sum() == 0 and b[:, -1].sum() == len(x)
    for j, level in enumerate(x[0]):
        p = level / 255
        assert abs(b[:, j].mean() - p) <= 5 * math.sqrt(p * (1 - p) / len(x)) + 1e-12
    # one stream in row-major order: a prefix of the images gets a prefix of the sample
    np.testing.assert_array_equal(data.sample_static_binarization(x[:100], seed=7), b[:100])


def test_binarized_mnist_sampled_tiny(tiny_mnist, monkeypatch):
    root, arrays = tiny_mnist
    assert data.binarized_mnist_source(root) == f"sampled-seed-{data.BINARIZATION_SEED}"
    # the recorded checksum is that of the real build, so the tiny build must be rejected ...
    with pytest.raises(data.DataFileError, match=data_mnist._sampled_name(data.BINARIZATION_SEED)):
        data.binarized_mnist("train", root, download=False)
    path = root / data_mnist._sampled_name(data.BINARIZATION_SEED)
    built = _sha(path)
    # ... and a rebuild from scratch reproduces its bytes exactly
    path.unlink()
    data_mnist._build_sampled(root, data.BINARIZATION_SEED, download=False)
    assert _sha(path) == built
    monkeypatch.setattr(data_mnist, "BINARIZED_SAMPLED_SHA256", built)
    splits = {s: data.binarized_mnist(s, root, download=False) for s in ("train", "valid", "test")}
    assert {s: tuple(x.shape) for s, x in splits.items()} == {"train": (8, 784), "valid": (4, 784), "test": (4, 784)}
    for x in splits.values():
        assert x.dtype == torch.float32 and set(x.unique().tolist()) <= {0.0, 1.0}
    expected = data.sample_static_binarization(np.concatenate([arrays["x_train"], arrays["x_test"]]))
    np.testing.assert_array_equal(torch.cat(list(splits.values())).numpy(), expected)
    with pytest.raises(ValueError, match="source"):
        data.binarized_mnist("train", root, source="dynamic")


def _write_amat(path: Path, b: np.ndarray) -> None:
    path.write_text("".join(" ".join(map(str, row)) + "\n" for row in b))


def test_binarized_mnist_larochelle_tiny(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    sizes = {"train": 5, "valid": 3, "test": 2}
    monkeypatch.setattr(data_mnist, "BINARIZED_SIZES", sizes)
    content, shas = {}, {}
    for i, (split, n) in enumerate(sizes.items()):
        content[split] = rng.integers(0, 2, (n, 784), dtype=np.uint8)
        path = tmp_path / f"binarized_mnist_{split}.amat"
        _write_amat(path, content[split])
        assert path.stat().st_size == n * 1568  # the published sizes: 1568 bytes an image
        shas[split] = _sha(path)
        if i == 0:  # only one file present: auto must refuse to mix binarizations
            with pytest.raises(data.DataFileError, match="only some"):
                data.binarized_mnist_source(tmp_path)
    monkeypatch.setattr(data_mnist, "LAROCHELLE_SHA256", shas)
    assert data.binarized_mnist_source(tmp_path) == "larochelle-murray"
    for split in sizes:
        x = data.binarized_mnist(split, tmp_path, download=False)
        np.testing.assert_array_equal(x.numpy(), content[split].astype(np.float32))
    monkeypatch.setattr(data_mnist, "LAROCHELLE_SHA256", {**shas, "test": "0" * 64})
    with pytest.raises(data.DataFileError, match="binarized_mnist_test.amat"):
        data.binarized_mnist("test", tmp_path, download=False)


def test_larochelle_missing_without_download(tmp_path):
    with pytest.raises(data.DataFileError, match="binarized_mnist_valid.amat"):
        data.binarized_mnist("valid", tmp_path, source="larochelle-murray", download=False)


@needs_real
def test_real_binarized_mnist():
    source = data.binarized_mnist_source(REAL)
    sizes = {"train": 50000, "valid": 10000, "test": 10000}
    for split, n in sizes.items():
        x = data.binarized_mnist(split, REAL)
        assert x.shape == (n, 784) and x.dtype == torch.float32
        assert 0.10 < x.mean().item() < 0.16  # MNIST's mean grey level / 255 is 0.13
    if source.startswith("sampled"):
        # the stored file is the documented sample: re-draw the first 100 images and compare
        grey, _ = data.load_mnist("train", REAL)
        again = data.sample_static_binarization(grey[:100].numpy(), data.BINARIZATION_SEED)
        np.testing.assert_array_equal(data.binarized_mnist("train", REAL)[:100].numpy(), again)


@needs_real
def test_real_mnist_splits():
    x, y = data.load_mnist("train", REAL)
    assert x.shape == (60000, 28, 28) and y[0].item() == 5
    x, y = data.load_mnist("test", REAL)
    assert x.shape == (10000, 28, 28) and y[0].item() == 7


@pytest.mark.skipif(REAL is None or not (REAL / "mnist-idx").is_dir(), reason="needs get_datasets.sh --keep-raw")
def test_torchvision_mnist_matches_npz():
    ds = data.torchvision_mnist("test", REAL, download=False)
    x, y = data.load_mnist("test", REAL)
    img, label = ds[0]
    assert img.shape == (1, 28, 28) and label == y[0].item()
    torch.testing.assert_close(img[0], x[0].float() / 255)


# --- CIFAR-10 --------------------------------------------------------------------------------------

def test_load_cifar10_layout(tiny_cifar):
    root, arrays = tiny_cifar
    x, y = data.load_cifar10("train", root, download=False)
    assert x.dtype == torch.uint8 and x.shape == (6, 32, 32, 3) and y.dtype == torch.int64
    np.testing.assert_array_equal(x.numpy(), arrays["x_train"])


def test_cifar10_patches(tiny_cifar):
    root, arrays = tiny_cifar
    p = data.cifar10_patches("test", 50, size=8, root=root)
    assert p.shape == (50, 3, 8, 8) and p.dtype == torch.uint8
    assert torch.equal(p, data.cifar10_patches("test", 50, size=8, root=root))  # fixed test set
    assert not torch.equal(p, data.cifar10_patches("test", 50, size=8, seed=123, root=root))
    # each patch is the documented crop: image and corner from the generator, in that order
    g = torch.Generator().manual_seed(data.CIFAR10_TEST_PATCH_SEED)
    idx, top, left = torch.randint(3, (50,), generator=g), torch.randint(25, (50,), generator=g), \
        torch.randint(25, (50,), generator=g)
    for k in range(50):
        crop = arrays["x_test"][idx[k], top[k]:top[k] + 8, left[k]:left[k] + 8].transpose(2, 0, 1)
        np.testing.assert_array_equal(p[k].numpy(), crop)
    full = data.cifar10_patches("train", 4, size=32, root=root)
    assert full.shape == (4, 3, 32, 32)
    with pytest.raises(ValueError, match="size"):
        data.cifar10_patches("train", 4, size=33, root=root)


#: sha256 of the 10 000 default 8x8 test patches of the real CIFAR-10 (catches a change in drawing).
REAL_TEST_PATCHES_SHA256 = "f58088bac1270716ce295ee484d744e8eda72c996825495a7b919f31aef2afcc"


@pytest.mark.skipif(REAL is None or not (REAL / "cifar10.npz").is_file(), reason="no cifar10.npz")
def test_real_cifar10_fixed_test_patches():
    x, y = data.load_cifar10("test", REAL)
    assert x.shape == (10000, 32, 32, 3) and y.shape == (10000,)
    p = data.cifar10_patches("test", 10000, root=REAL, images=x)
    assert hashlib.sha256(p.numpy().tobytes()).hexdigest() == REAL_TEST_PATCHES_SHA256


def test_to_unit_interval_range_and_inverse():
    eps = 1e-3
    x = torch.arange(256, dtype=torch.uint8).repeat(50)
    y = data.to_unit_interval(x, eps, torch.Generator().manual_seed(0))
    assert y.dtype == torch.float32 and y.min() >= eps and y.max() <= 1 - eps
    # undoing the affine map and flooring recovers the pixel (u lies in [0, 1))
    v = (y.double() - eps) / (1 - 2 * eps) * 256
    assert torch.equal(v.floor().clamp(0, 255).to(torch.uint8), x)
    assert torch.equal(y, data.to_unit_interval(x, eps, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="eps"):
        data.to_unit_interval(x, 0.5)


def test_unit_interval_log_jacobian_autograd():
    eps, dim = 1e-4, 5
    affine = lambda v: eps + (1 - 2 * eps) * v
    jac = torch.autograd.functional.jacobian(affine, torch.rand(dim, dtype=torch.float64))
    assert math.isclose(torch.logdet(jac).item(), data.unit_interval_log_jacobian(dim, eps), rel_tol=1e-12)
    assert math.isclose(data.unit_interval_log_jacobian(3072, eps), 3072 * math.log(1 - 2 * eps))


def test_pixel_space_log_density_uniform():
    # y uniform on [eps, 1-eps]^D  <=>  x + u uniform on [0, 256)^D: density 256^-D, 8 bits a dimension
    eps, dim = 1e-4, 3 * 8 * 8
    log_p_y = -dim * math.log(1 - 2 * eps)
    log_p_x = data.pixel_space_log_density(log_p_y, dim, eps)
    assert math.isclose(log_p_x, -dim * math.log(256), rel_tol=1e-12)
    assert math.isclose(data.bits_per_dim(log_p_x, dim), 8.0, rel_tol=1e-12)


# --- batches ---------------------------------------------------------------------------------------

def test_batches_epoch():
    x = torch.arange(10)
    out = list(data.batches(x, 3, torch.Generator().manual_seed(0)))
    assert [len(b) for b in out] == [3, 3, 3]
    assert len(set(torch.cat(out).tolist())) == 9  # no repeats within an epoch
    again = list(data.batches(x, 3, torch.Generator().manual_seed(0)))
    assert all(torch.equal(a, b) for a, b in zip(out, again))
    full = list(data.batches(x, 3, torch.Generator().manual_seed(0), drop_last=False))
    assert sorted(torch.cat(full).tolist()) == list(range(10)) and len(full[-1]) == 1
    assert torch.equal(torch.cat(list(data.batches(x, 4, shuffle=False, drop_last=False))), x)


def test_batches_tuples_stay_aligned():
    x, y = torch.arange(20).float().reshape(10, 2), torch.arange(10)
    for bx, by in data.batches((x, y), 4, torch.Generator().manual_seed(1)):
        assert torch.equal(bx[:, 0], 2 * by.float())


def test_batches_errors():
    with pytest.raises(ValueError, match="no batch"):
        next(data.batches(torch.zeros(3), 4, torch.Generator()))
    with pytest.raises(ValueError, match="different lengths"):
        next(data.batches((torch.zeros(3), torch.zeros(4)), 2, torch.Generator()))


@pytest.mark.skipif(REAL is None or not (REAL / "mnist-idx").is_dir(), reason="needs get_datasets.sh --keep-raw")
def test_torchvision_fallback_caches_the_reference_bytes(tmp_path):
    # the online path (torchvision reads the idx files, we cache mnist.npz) writes the same bytes as
    # get_datasets.sh; the idx files are linked in so that nothing is downloaded
    (tmp_path / "mnist-idx").symlink_to(REAL / "mnist-idx")
    data_mnist._link_mnist_idx(tmp_path)
    path = data_mnist._mnist_from_torchvision(tmp_path)
    assert _sha(path) == data.MNIST_NPZ_SHA256


# --- API reference --------------------------------------------------------------------------------

def test_api_page_constants_are_documented_where_they_are_defined():
    # api/data.md lists flowbook.data's constants with autodata; they are re-exported, so their text comes
    # from the #: comment of the submodule that defines them (_ext/reexported_comments.py)
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root / "_ext"))
    try:
        from reexported_comments import defining_comment
    finally:
        sys.path.pop(0)
    page = (root / "api" / "data.md").read_text(encoding="utf-8")
    names = re.findall(r"^\.\. autodata:: flowbook\.data\.(\w+)$", page, re.M)
    assert len(names) == 7
    for name in names:
        assert hasattr(data, name), f"api/data.md documents flowbook.data.{name}, which does not exist"
        comment = defining_comment("flowbook.data", name)
        assert comment and comment[0], f"flowbook.data.{name} has no #: comment in the module that defines it"
    assert defining_comment("flowbook.data", "CIFAR10_TEST_PATCH_SEED")[0].startswith("Seed of the fixed")


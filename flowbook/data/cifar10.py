"""CIFAR-10, the data of the paper's Table 3 (Section 6.2): the images and seeded random patches of them."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .files import data_root, load_split, record_verified, split_name, torchvision_root, write_npz

__all__ = ["CIFAR10_NPZ_SHA256", "CIFAR10_SHAPES", "CIFAR10_TRAIN_PATCH_SEED", "CIFAR10_TEST_PATCH_SEED",
           "CIFAR10_CLASSES", "load_cifar10", "cifar10_patches"]

#: sha256 of ``cifar10.npz`` as ``get_datasets.sh`` builds it (as ``MNIST_NPZ_SHA256``).
CIFAR10_NPZ_SHA256 = "bc3dbefbeb24a854ff11a51c1c5a821c1b3876a0c44139eb94140135956c2536"

CIFAR10_SHAPES = {"x_train": (50000, 32, 32, 3), "y_train": (50000,),
                  "x_test": (10000, 32, 32, 3), "y_test": (10000,)}

#: Default seed of the CIFAR-10 training patches (:func:`cifar10_patches`); pass a new seed per epoch
#: for fresh patches.
CIFAR10_TRAIN_PATCH_SEED = 0
#: Seed of the fixed CIFAR-10 test patch set (:func:`cifar10_patches`).
CIFAR10_TEST_PATCH_SEED = 2015


def _cifar10_from_torchvision(root: Path) -> Path:
    """Download CIFAR-10 with torchvision (md5-checked) and cache it as ``cifar10.npz`` (HWC uint8)."""
    from torchvision.datasets import CIFAR10

    tv = torchvision_root(root)
    parts = []
    for train, split in ((True, "train"), (False, "test")):
        ds = CIFAR10(str(tv), train=train, download=True)
        parts += [(f"x_{split}", np.asarray(ds.data, dtype=np.uint8)),
                  (f"y_{split}", np.asarray(ds.targets, dtype=np.uint8))]
    path = root / "cifar10.npz"
    write_npz(path, parts)
    record_verified(path)
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
    return load_split(root, "cifar10.npz", "CIFAR-10", CIFAR10_NPZ_SHA256, CIFAR10_SHAPES,
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
    split = split_name(split, ("train", "test"))
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

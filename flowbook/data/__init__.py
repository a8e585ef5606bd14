"""Datasets for the paper's image experiments (Section 6.2): binarized MNIST (Table 2) and CIFAR-10 (Table 3).

Everything is read from one *data root* (see :func:`data_root`). When a file is missing, torchvision
downloads the dataset and the same ``.npz`` layout is cached in the root; on a machine without web access
the root can instead be built by ``get_datasets.sh``, which writes ``mnist.npz`` and ``cifar10.npz`` from
verified copies of the original files.

Every file is checked before use (sha256, then shapes and dtypes), and an unusable file raises an error
that names it and says what to do. The package's modules, whose public names are all available here:

* ``flowbook.data.files``: the data root, file integrity and the npz caches;
* ``flowbook.data.mnist``: MNIST's grey levels and the two static binarizations of Table 2 (every
  reported number says which one it used, :func:`binarized_mnist_source`);
* ``flowbook.data.cifar10``: CIFAR-10's images and seeded patches (Table 3);
* ``flowbook.data.units``: dequantization, and densities in nats or bits per dimension of the pixels;
* ``flowbook.data.minibatches``: minibatches from pre-loaded tensors.
"""
from __future__ import annotations

from .cifar10 import (CIFAR10_CLASSES, CIFAR10_NPZ_SHA256, CIFAR10_SHAPES, CIFAR10_TEST_PATCH_SEED,
                      CIFAR10_TRAIN_PATCH_SEED, cifar10_patches, load_cifar10)
from .files import GET_DATASETS, DataFileError, data_root
from .minibatches import batches
from .mnist import (BINARIZATION_SEED, BINARIZED_SAMPLED_SHA256, BINARIZED_SIZES, LAROCHELLE_SHA256, LAROCHELLE_URL,
                    MNIST_NPZ_SHA256, MNIST_SHAPES, binarized_mnist, binarized_mnist_source, dynamic_binarize,
                    load_mnist, sample_static_binarization, torchvision_mnist)
from .units import bits_per_dim, pixel_space_log_density, to_unit_interval, unit_interval_log_jacobian

__all__ = [
    "data_root", "load_mnist", "dynamic_binarize", "torchvision_mnist",
    "binarized_mnist", "binarized_mnist_source", "sample_static_binarization",
    "load_cifar10", "cifar10_patches", "to_unit_interval", "unit_interval_log_jacobian",
    "pixel_space_log_density", "bits_per_dim", "batches", "DataFileError",
]

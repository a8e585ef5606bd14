"""Minibatches from pre-loaded tensors, the data order of every training loop."""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

__all__ = ["batches"]


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

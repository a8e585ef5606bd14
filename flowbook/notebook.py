"""What every chapter runs first: seeds, plotting style, device and mode.

The chapters run unchanged in three places: the CI's CPU, a GPU runner and a fresh Colab runtime.
`setup` makes them behave the same in all three, and prints only text that does not depend on the
device, so that nbval compares the same output everywhere.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from . import runner

MODES = ("fast", "full")


def get_mode() -> str:
    """The run mode from ``FLOWBOOK_MODE``: ``fast`` (default) or ``full`` (the paper's protocol)."""
    mode = os.environ.get("FLOWBOOK_MODE", "fast").strip().lower()
    if mode not in MODES:
        raise ValueError(f"FLOWBOOK_MODE={mode!r} is not a mode; set it to one of {MODES}")
    return mode


def pick_device() -> torch.device:
    """CUDA when available (``FLOWBOOK_DEVICE`` overrides, e.g. ``cpu``), else the CPU: the runner's
    choice (:func:`flowbook.runner.pick_device`), so that chapters and commands pick alike."""
    return runner.pick_device(os.environ.get("FLOWBOOK_DEVICE") or "auto")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so that a chapter's run is repeatable."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_style() -> None:
    """The book's figure style: seaborn's, at a size that reads well at the book's page width."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette="deep")
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100, "figure.figsize": (7.0, 4.0),
                         "axes.titlesize": "medium", "image.cmap": "viridis"})


def setup(seed: int = 0, verbose: bool = True) -> tuple[torch.device, str]:
    """Seed, style, device and mode for a chapter. Returns ``(device, mode)``.

    Prints the mode (device-independent). The device is returned, not printed, so that the
    notebook's stored output is the same on CPU and GPU.
    """
    seed_everything(seed)
    set_style()
    mode = get_mode()
    if verbose:
        print(f"flowbook mode: {mode}")
    return pick_device(), mode

"""Tests for flowbook.notebook: mode, device and seeding."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from flowbook import notebook


@pytest.mark.parametrize("value, mode", [(None, "fast"), ("fast", "fast"), ("full", "full"), (" FULL ", "full")])
def test_get_mode(monkeypatch, value, mode) -> None:
    if value is None:
        monkeypatch.delenv("FLOWBOOK_MODE", raising=False)
    else:
        monkeypatch.setenv("FLOWBOOK_MODE", value)
    assert notebook.get_mode() == mode


def test_bad_mode_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setenv("FLOWBOOK_MODE", "fastest")
    with pytest.raises(ValueError, match=r"FLOWBOOK_MODE='fastest' is not a mode; set it to one of \('fast', 'full'\)"):
        notebook.get_mode()
    with pytest.raises(ValueError, match="FLOWBOOK_MODE"):
        notebook.setup(seed=0)


def test_pick_device(monkeypatch) -> None:
    monkeypatch.setenv("FLOWBOOK_DEVICE", "cpu")
    assert notebook.pick_device() == torch.device("cpu")
    monkeypatch.delenv("FLOWBOOK_DEVICE")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert notebook.pick_device().type == expected


def test_setup_seeds_and_prints_only_the_mode(monkeypatch, capsys) -> None:
    monkeypatch.setenv("FLOWBOOK_MODE", "fast")
    draws = []
    for _ in range(2):
        device, mode = notebook.setup(seed=7)
        draws.append((random.random(), float(np.random.rand()), float(torch.rand(()))))
    assert draws[0] == draws[1]
    assert mode == "fast" and isinstance(device, torch.device)
    assert capsys.readouterr().out == "flowbook mode: fast\n" * 2
    notebook.setup(seed=8, verbose=False)
    assert float(torch.rand(())) != draws[0][2]
    assert capsys.readouterr().out == ""

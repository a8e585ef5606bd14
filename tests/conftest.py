"""Shared fixtures of the test suite."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread: the small models of the tests gain nothing from two, and lose much on a busy
    machine. Modules use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

"""Shared fixtures of the test suite."""
from __future__ import annotations

from collections.abc import Callable

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


@pytest.fixture
def refused(capsys):
    """``refused(main, argv)``: run a command's ``main`` and check that it refuses its options the way
    argparse refuses bad usage (exit status 2) with one line on stderr, which it returns."""
    def run(main: Callable[[list[str]], int], argv: list[str]) -> str:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, f"one line, got {err!r}"
        return err
    return run


@pytest.fixture(autouse=True)
def no_mode_from_the_environment(monkeypatch):
    """The commands' ``--mode`` defaults to ``$FLOWBOOK_MODE``: the tests run without it (fast mode), so
    that a shell with ``FLOWBOOK_MODE=full`` does not turn a test's run into the paper's protocol; tests
    of the variable set it themselves."""
    monkeypatch.delenv("FLOWBOOK_MODE", raising=False)

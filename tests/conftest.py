"""Shared fixtures of the test suite."""
from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

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


@pytest.fixture
def store_server(tmp_path_factory):
    """``store_server(root)``: serve ``root`` the way the store downloads (``.ci/store_server.py``:
    ``/{commit}/{relpath}`` answers ``root/relpath``) on a free local port, and return its base URL;
    every server started is stopped after the test."""
    servers = []

    def start(root) -> str:
        port_file = tmp_path_factory.mktemp("server") / "port"
        proc = subprocess.Popen([sys.executable, str(Path(__file__).parent.parent / ".ci" / "store_server.py"),
                                 str(root), str(port_file)])
        servers.append(proc)
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the store server did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{port_file.read_text()}"

    yield start
    for proc in servers:
        proc.kill()
        proc.wait()

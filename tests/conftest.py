"""Shared fixtures of the test suite."""
from __future__ import annotations

import json
import math
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


@pytest.fixture
def train_row(tmp_path):
    """``train_row(flow, *argv)``: train a DLGM row of flow type ``flow`` (K = 2) for 3 updates through the
    command line (``argv``: more options, e.g. ``--flow-option``), as a new flow type must, and return its
    result record (the weights are checked written)."""
    from flowbook.__main__ import main

    def run(flow: str, *extra: str) -> dict:
        argv = ["train", "--flow", flow, "--K", "2", "--hidden", "16", "--updates", "3", "--batch-size", "20",
                "--eval-points", "5", "--eval-samples", "2", "--no-progress", "--ckpt-dir", str(tmp_path / "ckpt"),
                "--out", str(tmp_path / "out"), "--weights-dir", str(tmp_path / "w"), *extra]
        assert main(argv) == 0
        assert (tmp_path / "w" / f"mnist_fast_{flow}_K2.pt").is_file()
        record = json.loads((tmp_path / "out" / f"mnist_fast_{flow}_K2.json").read_text())
        assert record["config"]["model"]["flow"] == flow and record["config"]["updates_done"] == 3
        assert math.isfinite(record["metrics"]["neg_log_p"])
        return record
    return run


@pytest.fixture
def fit_2d(tmp_path):
    """``fit_2d(methods)``: fit ``methods`` to U1 with K = 1 and 2 for 4 updates through
    :mod:`flowbook.experiments2d`'s command line; checks one finite KL per (method, K) and returns the rows."""
    from flowbook import experiments2d

    def run(*methods: str) -> list[dict]:
        argv = ["--mode", "fast", "--targets", "U1", "--methods", *methods, "--Ks", "1", "2", "--updates", "4",
                "--samples", "8", "--eval-samples", "200", "--out", str(tmp_path / "out2d"),
                "--ckpt-dir", str(tmp_path / "ck2d")]
        assert experiments2d.main(argv) == 0
        rows = json.loads((tmp_path / "out2d" / "energy2d_fast.json").read_text())["metrics"]["rows"]
        assert sorted((r["method"], r["K"]) for r in rows) == sorted((m, k) for m in methods for k in (1, 2))
        assert all(math.isfinite(r["KL"]) for r in rows)
        return rows
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

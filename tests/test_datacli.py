"""Tests of ``python -m flowbook.datacli fetch`` (flowbook/datacli.py): the order of its attempts and its
messages. No test downloads or builds a dataset: the steps are replaced by fakes, and the real checks
run on empty folders only."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flowbook import datacli


def fake_shared(tmp_path: Path, body: str = "exit 0") -> Path:
    """A shared folder whose get_datasets.sh records its arguments in calls.txt, then runs ``body``."""
    shared = tmp_path / "shared"
    script = shared / datacli.GET_DATASETS
    script.parent.mkdir(parents=True)
    script.write_text(f'#!/usr/bin/env bash\necho "$@" >> "{shared}/calls.txt"\n{body}\n')
    return shared


@pytest.fixture
def states(monkeypatch):
    """Replace datacli.missing by a queue of answers; records how often it was asked."""
    answers: list[dict[str, str]] = []

    def fake_missing(root, names=None):
        return answers.pop(0) if len(answers) > 1 else answers[0]

    monkeypatch.setattr(datacli, "missing", fake_missing)
    return answers


def test_complete_root_does_nothing(tmp_path, states, monkeypatch, capsys):
    states.append({})
    monkeypatch.setattr(datacli, "fetch_with_torchvision", lambda *a: pytest.fail("downloaded"))
    shared = fake_shared(tmp_path)
    assert datacli.fetch(tmp_path / "data", shared, is_online=lambda: True) == 0
    assert not (shared / "calls.txt").exists()
    assert "present and verified" in capsys.readouterr().out


def test_online_downloads_with_torchvision_first(tmp_path, states, monkeypatch):
    states.extend([{"MNIST": "missing", "CIFAR-10": "missing"}, {}])
    calls = []
    monkeypatch.setattr(datacli, "fetch_with_torchvision", lambda root, names: calls.append(list(names)))
    shared = fake_shared(tmp_path)
    assert datacli.fetch(tmp_path / "data", shared, is_online=lambda: True) == 0
    assert calls == [["MNIST", "CIFAR-10"]]
    assert not (shared / "calls.txt").exists()  # the local build was not needed


def test_offline_builds_with_the_shared_script(tmp_path, states, monkeypatch, capsys):
    states.extend([{"CIFAR-10": "missing"}, {}])
    monkeypatch.setattr(datacli, "fetch_with_torchvision", lambda *a: pytest.fail("downloaded offline"))
    shared = fake_shared(tmp_path)
    root = tmp_path / "data"
    assert datacli.fetch(root, shared, is_online=lambda: False) == 0
    assert (shared / "calls.txt").read_text().split() == [str(root)]
    assert "do not answer" in capsys.readouterr().out


def test_failed_download_falls_back_to_the_shared_script(tmp_path, states, monkeypatch):
    states.extend([{"MNIST": "missing"}, {"MNIST": "still missing"}, {}])
    monkeypatch.setattr(datacli, "fetch_with_torchvision", lambda root, names: None)
    shared = fake_shared(tmp_path)
    assert datacli.fetch(tmp_path / "data", shared, is_online=lambda: True) == 0
    assert (shared / "calls.txt").exists()


def test_nothing_works_says_what_to_do(tmp_path, states, capsys):
    states.append({"MNIST": "mnist.npz is missing"})
    shared = fake_shared(tmp_path, body="exit 3")  # the local build fails
    assert datacli.fetch(tmp_path / "data", shared, is_online=lambda: False) == 1
    err = capsys.readouterr().err
    assert "MNIST: mnist.npz is missing" in err
    assert "get_datasets.sh" in err and "FLOWBOOK_DATA" in err


def test_missing_names_the_empty_root(tmp_path):
    """The real check (no fakes) on an empty folder: both datasets missing, and the reason says how
    to build them."""
    gaps = datacli.missing(tmp_path)
    assert set(gaps) == {"MNIST", "CIFAR-10"}
    assert all("get_datasets.sh" in reason for reason in gaps.values())


def test_cli_offline_without_shared_folder_fails_clearly(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "flowbook.datacli", "fetch", "--root", str(tmp_path / "d"),
                           "--offline", "--shared", str(tmp_path / "nowhere")],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "could not prepare the data root" in proc.stderr and "--shared DIR" in proc.stderr


def test_cli_refuses_a_data_root_that_is_a_file_in_one_line(tmp_path, monkeypatch, capsys):
    """Issue 26, bug 11: --root or FLOWBOOK_DATA naming a file (was a raw FileExistsError)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert datacli.main(["fetch", "--root", str(blocker), "--offline"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"python -m flowbook.datacli: error: --root {blocker} is a file, not a directory; give a directory for "
        "the datasets"]
    monkeypatch.setenv("FLOWBOOK_DATA", str(blocker))
    assert datacli.main(["fetch", "--offline"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"FLOWBOOK_DATA {blocker} is a file, not a directory" in line
    assert datacli.main(["fetch", "--root", str(blocker / "below"), "--offline"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"{blocker / 'below'} cannot be used as a directory" in line

"""Tests of the command line ``python -m flowbook``: every option is checked before any data loads, a bad
value ends the command with one line naming the option (exit status 2), and a damaged checkpoint or a
stored result of another configuration is refused at once."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flowbook import __main__ as cli
from flowbook.checkpoints import checkpoint_path
from flowbook.train import FAST

ROOT = Path(__file__).resolve().parent.parent


def _dirs(tmp_path: Path) -> list[str]:
    return ["--ckpt-dir", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out")]


@pytest.mark.parametrize("command", ["train", "eval"])
@pytest.mark.parametrize("options, names", [
    (["--updates", "0"], "--updates must be ≥ 1"),
    (["--updates", "-5"], "--updates must be ≥ 1"),
    (["--eval-points", "-5"], "--eval-points must be in 1..10000"),
    (["--eval-points", "10001"], "--eval-points must be in 1..10000"),
    (["--batch-size", "0"], "--batch-size must be in 1..50000"),
    (["--batch-size", "100000"], "--batch-size must be in 1..50000"),
    (["--lr", "0"], "--lr must be a finite number > 0"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    (["--lr-final=-1e-5"], "--lr-final must be a finite number ≥ 0"),
    (["--momentum", "1.5"], "--momentum must be a finite number ≥ 0 and < 1"),
    (["--beta-warmup", "0"], "--beta-warmup must be a finite number > 0"),
    (["--valid-every", "-1"], "--valid-every must be ≥ 0"),
    (["--K", "10000"], "--K must be in 0..1000"),
    (["--K", "-1"], "--K must be in 0..1000"),
    (["--rows", "planar:2,planar:5000"], "--rows (planar:5000): K must be in 0..1000"),
    (["--rows", "planar:2,spline:3"], "--rows: flow 'spline' must be one of"),
    (["--rows", "planar2"], "--rows: row 'planar2' is not FLOW:K"),
    (["--hidden", "10"], "--hidden must be a positive multiple of 4"),
    (["--hidden", "0", "--maxout-units", "outputs"], "--hidden must be a positive multiple"),
    (["--seed", "-1"], "--seed must be in 0..4294967295"),
    (["--threads", "0"], "--threads must be ≥ 1"),
    (["--eval-samples", "0"], "--eval-samples must be ≥ 1"),
    (["--label", "../escape"], "--label may hold only"),
    (["--device", "gpu"], "--device must be auto, cpu, cuda or cuda:N"),
])
def test_an_out_of_range_option_is_refused_with_one_line(tmp_path, refused, command, options, names) -> None:
    err = refused(cli.main, [command, *options, *_dirs(tmp_path)])
    assert names in err


@pytest.mark.parametrize("options, names", [
    (["--ckpt-every", "0"], "--ckpt-every must be ≥ 1"),
    (["--stop-at", "0"], "--stop-at must be ≥ 1"),
    (["--max-minutes", "0"], "--max-minutes must be a finite number > 0"),
    (["--max-minutes", "inf"], "--max-minutes must be a finite number > 0"),
])
def test_train_only_options_are_checked(tmp_path, refused, options, names) -> None:
    assert names in refused(cli.main, ["train", *options, *_dirs(tmp_path)])


def test_cuda_without_cuda_is_refused(tmp_path, refused, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = refused(cli.main, ["train", "--device", "cuda", *_dirs(tmp_path)])
    assert "--device cuda: CUDA is not available here" in err


def test_an_unwritable_directory_is_refused_before_training(tmp_path, refused) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    err = refused(cli.main, ["train", "--ckpt-dir", str(blocker / "ckpt"), "--out", str(tmp_path / "out")])
    assert "--ckpt-dir" in err and str(blocker / "ckpt") in err
    err = refused(cli.main, ["eval", "--ckpt-dir", str(tmp_path / "ckpt"), "--out", str(blocker / "out")])
    assert "--out" in err and str(blocker / "out") in err
    err = refused(cli.main, ["train", *_dirs(tmp_path), "--weights-dir", str(blocker / "w")])
    assert "--weights-dir" in err


def test_the_refusal_is_one_line_without_traceback_in_a_real_process(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "flowbook", "train", "--updates", "0", *_dirs(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["python -m flowbook: error: --updates must be ≥ 1, got 0"]


def test_a_damaged_checkpoint_is_named_with_the_fix(tmp_path, capsys) -> None:
    args = ["--rows", "planar:0,planar:2", "--updates", "10", *_dirs(tmp_path), "--no-progress"]
    cfg = dataclasses.replace(FAST, rows=(("planar", 0), ("planar", 2)), updates=10)
    path = checkpoint_path(cfg, tmp_path / "ckpt")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    assert cli.main(["train", *args]) == 2  # before any data loads
    err = capsys.readouterr().err
    assert str(path) in err and "damaged" in err and "--restart" in err
    assert cli.main(["eval", *args]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "train command with --restart" in err


def test_a_stored_result_of_another_configuration_is_refused_before_training(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "mnist_fast_diagonal.json").write_text(json.dumps({"config": {"train": {"lr": 123.0}}}))
    assert cli.main(["train", "--updates", "10", *_dirs(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "mnist_fast_diagonal.json holds a result of another configuration" in err and "--overwrite" in err
    assert not list((tmp_path / "ckpt").glob("*.pt")), "nothing was trained"

"""Tests of the command line ``python -m flowbook``: every option is checked before any data loads, a bad
value ends the command with one line naming the option (exit status 2), and a damaged checkpoint or a
stored result of another configuration is refused at once."""
from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flowbook import __main__ as cli
from flowbook import data, results
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
    # issue 26, bug 15: one row twice (K = 0 is one diagonal row whatever the flow), --flow/--K beside --rows
    (["--rows", "planar:0,planar:0"], "rows mnist_fast_diagonal appear twice"),
    (["--rows", "planar:0,radial:0"], "rows mnist_fast_diagonal appear twice"),
    (["--rows", "planar:0,planar:2", "--flow", "nice"], "give either --rows, or --flow and --K"),
    (["--rows", "planar:0,planar:2", "--K", "2"], "give either --rows, or --flow and --K"),
    # issue 26, bug 17: a width that would ask torch for terabytes
    (["--hidden", "400000000"], "--hidden must be in 1..10000"),
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


#: A run of a few seconds on the real binarized MNIST.
TINY = ["--hidden", "16", "--updates", "3", "--batch-size", "20", "--eval-points", "5", "--eval-samples", "2",
        "--no-progress"]


def _contents(*directories: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for d in directories if d.is_dir() for p in sorted(d.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def test_committed_weights_beside_no_result_of_this_run_are_not_replaced(tmp_path, monkeypatch, capsys) -> None:
    """Issue 26, bug 1: with --out elsewhere, stored mode's default --weights-dir (data/weights) still
    holds the committed weights of the row; the run is refused before training, the file unchanged."""
    monkeypatch.chdir(tmp_path)  # data/weights here is a copy of the committed one
    weights = Path("data/weights/mnist_stored_radial_K80.pt")
    weights.parent.mkdir(parents=True)
    shutil.copy(ROOT / weights, weights)
    before = weights.read_bytes()
    argv = ["train", "--mode", "stored", "--flow", "radial", "--K", "80", "--updates", "2", "--valid-every", "0",
            "--eval-points", "5", "--eval-samples", "2", "--ckpt-dir", "X", "--out", "Y", "--no-progress"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{weights} exists and Y/mnist_stored_radial_K80.json is not this configuration's result" in err
    assert "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert weights.read_bytes() == before and not list(Path("X").glob("*.pt")), "refused before training"


def test_a_finished_command_run_again_is_done_and_eval_only_adds_evaluations(tmp_path, capsys) -> None:
    """Issue 26, bug 3: the same train command after it finished changes nothing (its added evaluations
    stay); eval refuses a smaller evaluation, is done on an equal one and appends a larger one."""
    args = [*TINY, *_dirs(tmp_path), "--weights-dir", str(tmp_path / "w")]
    assert cli.main(["train", *args]) == 0
    result = tmp_path / "out" / "mnist_fast_diagonal.json"
    assert results.add_evaluation(result, {"samples": 9, "points": 5, "seed": 1, "neg_log_p": 1.0}, device="cpu")
    stored = _contents(tmp_path / "out", tmp_path / "w")
    capsys.readouterr()
    assert cli.main(["train", *args]) == 0
    out = capsys.readouterr().out
    assert out.startswith("done:") and str(result) in out and str(tmp_path / "w" / "mnist_fast_diagonal.pt") in out
    assert _contents(tmp_path / "out", tmp_path / "w") == stored

    def evaluate(points: str, samples: str) -> int:
        return cli.main(["eval", *args, "--eval-points", points, "--eval-samples", samples])

    assert evaluate("5", "1") == 2 and evaluate("4", "3") == 2  # fewer samples, fewer points
    assert "would not replace it" in capsys.readouterr().err
    assert evaluate("5", "2") == 0 and "done:" in capsys.readouterr().out
    assert _contents(tmp_path / "out", tmp_path / "w") == stored
    assert evaluate("5", "3") == 0
    record = json.loads(result.read_text())
    assert record["metrics"] == json.loads(stored[result])["metrics"]
    assert [(e["samples"], e["points"]) for e in record["evaluations"]] == [(9, 5), (3, 5)]
    assert record["evaluations"][1]["command"].startswith("python -m flowbook eval")
    assert (tmp_path / "w" / "mnist_fast_diagonal.pt").read_bytes() == stored[tmp_path / "w" / "mnist_fast_diagonal.pt"]


def _rows_trained_from_scratch() -> list[str]:
    """One committed MNIST row with weights per protocol label, among the rows trained from scratch (a
    stage continued from other weights needs those too); superseded stages' weights leave the tree."""
    from flowbook import store

    first: dict[str, str] = {}
    for rel in sorted(store.listed("data/weights/mnist_stored_")):
        name = Path(rel).stem
        record = json.loads((ROOT / "data" / "results" / f"{name}.json").read_text())
        if not record["config"]["train"].get("init_from"):
            first.setdefault(str(record["config"]["train"].get("label")), name)
    return sorted(first.values())


@pytest.mark.parametrize("name", _rows_trained_from_scratch())
def test_the_command_of_a_committed_row_run_again_is_done(tmp_path, monkeypatch, capsys, name) -> None:
    """Re-running a stored row's own command (from its provenance) recognises the row as done: its
    digest is unchanged, and nothing is trained (``--stop-at 1`` would stop a training run with 3)."""
    monkeypatch.chdir(tmp_path)
    for kind, ext in (("results", "json"), ("weights", "pt")):
        Path("data", kind).mkdir(parents=True)
        shutil.copy(ROOT / "data" / kind / f"{name}.{ext}", Path("data", kind))
    stored = _contents(Path("data/results"), Path("data/weights"))
    argv = shlex.split(json.loads(stored[Path(f"data/results/{name}.json")])["command"])[3:]
    assert argv[0] == "train"
    assert cli.main([*argv, "--ckpt-dir", "ck", "--stop-at", "1"]) == 0
    assert capsys.readouterr().out.startswith("done:")
    assert _contents(Path("data/results"), Path("data/weights")) == stored


def test_flowbook_mode_is_the_default_of_mode(tmp_path, monkeypatch, capsys) -> None:
    """Issue 26, bug 13: FLOWBOOK_MODE=full makes a full-mode run (here: refused by a full-mode result of
    another configuration, before any data loads); a bogus value is refused in one line."""
    (tmp_path / "out").mkdir()
    for name in ("mnist_full_diagonal", "mnist_fast_diagonal"):
        (tmp_path / "out" / f"{name}.json").write_text(json.dumps({"config": {"train": {"lr": 1.0}}}))
    monkeypatch.setenv("FLOWBOOK_MODE", "full")
    assert cli.main(["train", *_dirs(tmp_path)]) == 2
    assert "mnist_full_diagonal.json holds a result of another configuration" in capsys.readouterr().err
    monkeypatch.setenv("FLOWBOOK_MODE", "bogus")
    assert cli.main(["train", *_dirs(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["python -m flowbook train: error: FLOWBOOK_MODE='bogus' is not a mode of "
                                        "this command; set it to one of fast, stored, full, or unset it"]


def _damage(root: Path, damage: str, monkeypatch) -> None:
    """A data root whose mnist.npz is damaged, or that does not exist (and torchvision is offline)."""
    if damage == "missing root":
        def offline(*_args, **_kwargs):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://..., got: offline")
        monkeypatch.setattr(data.mnist, "_mnist_from_torchvision", offline)
        return
    root.mkdir()
    real = data.data_root() / "mnist.npz"
    if damage == "flipped" and not real.is_file():
        pytest.skip("no mnist.npz in the data root to damage")
    content = {"empty": b"", "truncated": b"PK\x03\x04" + bytes(100)}.get(damage)
    if content is None:
        content = bytearray(real.read_bytes())
        content[5000] ^= 0xFF
    (root / "mnist.npz").write_bytes(bytes(content))


@pytest.mark.parametrize("damage", ["empty", "truncated", "flipped", "missing root"])
def test_a_damaged_dataset_ends_train_and_eval_with_one_line_and_status_1(tmp_path, monkeypatch, capsys,
                                                                          damage) -> None:
    """Issue 26, bug 6: the data file's own message, one line, exit status 1, no traceback."""
    root = tmp_path / "root"
    _damage(root, damage, monkeypatch)
    monkeypatch.setenv("FLOWBOOK_DATA", str(root))
    assert cli.main(["train", *TINY, *_dirs(tmp_path)]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("python -m flowbook train: error: ") and str(root / "mnist.npz") in line


def test_a_data_root_that_is_a_file_is_refused_before_training(tmp_path, monkeypatch, refused) -> None:
    """Issue 26, bug 11: FLOWBOOK_DATA naming a file (a raw FileExistsError when the data loaded)."""
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("FLOWBOOK_DATA", str(tmp_path / "a-file"))
    for command in ("train", "eval"):
        err = refused(cli.main, [command, *TINY, *_dirs(tmp_path)])
        assert f"FLOWBOOK_DATA {tmp_path / 'a-file'} is a file, not a directory" in err
    assert not (tmp_path / "ckpt").exists()


def test_a_diverged_run_ends_with_one_line_without_traceback_in_a_real_process(tmp_path) -> None:
    """Issue 26, bugs 6 and 7: a NaN loss ends the command with exit status 1 and one line that says
    what to change and mentions --restart."""
    proc = subprocess.run([sys.executable, "-m", "flowbook", "train", *TINY, "--updates", "30", "--ckpt-every", "10",
                           "--lr", "10000", *_dirs(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert "NaN or infinite" in line and "--restart" in line and "lower the learning rate" in line


def test_help_lists_every_command() -> None:
    """Issue 26, bug 17: --help names evaluate-weights and data besides train and eval."""
    proc = subprocess.run([sys.executable, "-m", "flowbook", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0
    for command in ("train", "eval", "evaluate-weights", "data"):
        assert f"\n    {command}" in proc.stdout

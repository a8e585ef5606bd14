"""Tests of the dataset-neutral runner (flowbook.runner, flowbook.checkpoints, flowbook.options): the names
of the long runs' checkpoints and results are pinned, stored results are recognized as their own
configuration, and the command-line training step resumes and exits as documented (0, 2, 3)."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from flowbook import cifar, pretrained, runid, runner
from flowbook.checkpoints import (KEYS, CheckpointError, checkpoint_path, find_checkpoint, legacy_checkpoint_path,
                                  load_checkpoint)
from flowbook.options import OptionError, check_device, check_float, check_int
from flowbook.runid import LATER_FIELDS
from flowbook.train import FAST, FULL, STORED, TrainConfig

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "data" / "results"

pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(record: dict) -> tuple[tuple[str, int], ...]:
    return tuple((flow, K) for flow, K in record["config"]["train"]["rows"])


@pytest.mark.parametrize("path", sorted(RESULTS.glob("mnist_stored_*.json")), ids=lambda p: p.stem)
def test_a_stored_table2_result_is_its_presets_configuration(path: Path) -> None:
    record = json.loads(path.read_text())
    train = record["config"]["train"]
    # a table row is the preset exactly; a labelled variant differs from it in the number of updates
    # (mnist_stored_updates120k_*), or in the rate and the maxout reading too (mnist_stored_short20k-*),
    # and a continuation stage (mnist_stored_cont20k-*, mnist_stored_updates240k_*) in what continues a
    # row (the weights it starts from, β = 1, the warm-up, the averaging, Adam's step), and chapter 8's rows
    # (mnist_stored_updates120k_<later flow>_K*) in Adam's step and the flow's own options; in nothing else
    names = ["updates", "lr", "maxout_units", "fused", "flow_options"]
    if train.get("init_from"):
        names += ["init_from", "init_sha256", "updates_before", "beta_start", "warmup", "ema_decay"]
        chain = record["config"]["chain"]
        assert chain[-1] == {"weights": train["init_from"], "sha256": train["init_sha256"],
                             "updates": train["updates_before"]}
        assert (RESULTS / f"{Path(train['init_from']).stem}.json").is_file()  # the stage it continued
    # (a field added after a run was made is absent from its record: the run had its neutral value)
    varied = {k: train.get(k, LATER_FIELDS.get(k, getattr(STORED, k))) for k in names}
    varied["flow_options"] = tuple(tuple(pair) for pair in varied["flow_options"])
    if not train["label"]:
        assert varied == {k: getattr(STORED, k) for k in varied}
    cfg = dataclasses.replace(STORED, rows=_rows(record), label=train["label"], **varied)
    assert runid.config_digest(train) == cfg.digest()
    assert cfg.result_name(*cfg.rows[0]) == path.stem
    runner.refuse_overwrite(path, cfg, overwrite=False)  # the same configuration: no --overwrite needed


@pytest.mark.parametrize("path", sorted(RESULTS.glob("cifar10_stored_*.json")), ids=lambda p: p.stem)
def test_a_stored_table3_result_is_its_presets_configuration(path: Path) -> None:
    record = json.loads(path.read_text())
    # every field is the preset's, the number of updates included
    cfg = dataclasses.replace(cifar.STORED, rows=_rows(record))
    assert runid.config_digest(record["config"]["train"]) == cfg.digest()
    assert cfg.result_name(*cfg.rows[0]) == path.stem
    runner.refuse_overwrite(path, cfg, overwrite=False)


@pytest.mark.parametrize("cfg, ckpt_dir, name", [
    (dataclasses.replace(STORED, rows=(("planar", 80),)), "data/checkpoints", "mnist_stored_planar80_1e13cfaad81e.pt"),
    (dataclasses.replace(STORED, rows=(("planar", 0),)), "data/checkpoints", "mnist_stored_diagonal_5701b5bbef5c.pt"),
    (dataclasses.replace(STORED, rows=(("nice", 40),)), "data/checkpoints", "mnist_stored_nice40_1664280968a0.pt"),
    (dataclasses.replace(FAST, rows=(("planar", 0), ("planar", 10))), "ck",
     "mnist_fast_diagonal-planar10_71fbd4dd8433.pt"),
    (dataclasses.replace(FULL, rows=(("planar", 80),), label="dry run"), "ck",
     "mnist_full_dry-run_planar80_0231868de21c.pt"),
    (dataclasses.replace(cifar.STORED, rows=(("planar", 10),)), "data/checkpoints/cifar10",
     "cifar10_stored_K10_21ccc64fc61f.pt"),
    (dataclasses.replace(cifar.STORED, rows=(("planar", 5),)), "data/checkpoints/cifar10",
     "cifar10_stored_K5_86c4000c5071.pt"),
    (cifar.FAST, "ck", "cifar10_fast_K0-2-5-10_df9734461efc.pt"),
    (dataclasses.replace(cifar.FAST, label="seed0"), "ck", "cifar10_fast_seed0_K0-2-5-10_89a79e1b81b9.pt"),
])
def test_checkpoint_names_of_the_long_runs_are_pinned(cfg: TrainConfig, ckpt_dir: str, name: str) -> None:
    # unfinished runs resume only from a file of exactly this name (or CIFAR-10's legacy name, below)
    assert checkpoint_path(cfg, ckpt_dir) == Path(ckpt_dir) / name


@pytest.mark.parametrize("cfg, name", [
    (dataclasses.replace(cifar.STORED, rows=(("planar", 10),)), "mnist_stored_planar10_21ccc64fc61f.pt"),
    (dataclasses.replace(cifar.STORED, rows=(("planar", 10),), updates=40_000),
     "mnist_stored_planar10_214c4a9e1f1f.pt"),
    (cifar.FAST, "mnist_fast_diagonal-planar2-planar5-planar10_df9734461efc.pt"),
])
def test_cifar_checkpoints_keep_their_legacy_names(cfg: TrainConfig, name: str, tmp_path: Path) -> None:
    # CIFAR-10 checkpoints were named mnist_... before they were named after their dataset
    assert legacy_checkpoint_path(cfg, tmp_path) == tmp_path / name
    assert find_checkpoint(cfg, tmp_path) == checkpoint_path(cfg, tmp_path)  # neither exists: the new name
    (tmp_path / name).touch()
    assert find_checkpoint(cfg, tmp_path) == tmp_path / name  # only the legacy one: it is used in place
    checkpoint_path(cfg, tmp_path).touch()
    assert find_checkpoint(cfg, tmp_path) == checkpoint_path(cfg, tmp_path)
    assert legacy_checkpoint_path(STORED, tmp_path) is None  # MNIST's names never changed


def test_the_committed_table3_checkpoint_is_found_and_loads() -> None:
    # the 40 000-update pass of Table 3's K = 10 row, under its legacy name (read only, never renamed)
    cfg = dataclasses.replace(cifar.STORED, rows=(("planar", 10),), updates=40_000)
    ckpt_dir = ROOT / "data" / "checkpoints" / "cifar10"
    path = ckpt_dir / "mnist_stored_planar10_214c4a9e1f1f.pt"
    if not path.exists():
        pytest.skip(f"{path} is not in this checkout (checkpoints are not committed)")
    assert find_checkpoint(cfg, ckpt_dir) == path
    assert load_checkpoint(path, cfg)["step"] > 0


def _patches(n: int = 200) -> torch.Tensor:
    return 0.05 + 0.9 * torch.rand(n, cifar.PATCH_DIM, generator=torch.Generator().manual_seed(0))


def test_a_cifar_run_resumes_from_its_legacy_named_checkpoint(tmp_path: Path) -> None:
    cfg = dataclasses.replace(cifar.FAST, rows=(("planar", 2),), hidden=16, updates=6, batch_size=20)
    x = _patches()
    args = _args(tmp_path, ckpt_dir=str(tmp_path))
    assert runner.train_command(cfg, args, prog="p", evaluate=False, x_train=x, stop_at=3, progress=False) == 3
    legacy = legacy_checkpoint_path(cfg, tmp_path)
    checkpoint_path(cfg, tmp_path).rename(legacy)  # as an earlier version left it
    run = runner.train_command(cfg, args, prog="p", evaluate=False, x_train=x, progress=False)
    assert run.finished and run.resumed_from == 3
    assert torch.load(legacy, weights_only=False)["step"] == 6 and not checkpoint_path(cfg, tmp_path).exists()
    uninterrupted = runner.train_command(cfg, _args(tmp_path, ckpt_dir=str(tmp_path / "b")), prog="p",
                                         evaluate=False, x_train=x, progress=False)
    for a, b in zip(run.model.state_dict().values(), uninterrupted.model.state_dict().values()):
        assert torch.equal(a, b)


def test_result_names_are_pinned() -> None:
    assert STORED.result_name("planar", 0) == "mnist_stored_diagonal"
    assert dataclasses.replace(FULL, label="dry run").result_name("nice", 20) == "mnist_full_dry-run_nice_K20"
    assert cifar.STORED.result_name("planar", 10) == "cifar10_stored_planar_K10"
    assert cifar.STORED.result_name("planar", 0) == "cifar10_stored_diagonal"
    assert dataclasses.replace(cifar.FAST, label="seed0").result_name("planar", 2) == "cifar10_fast_seed0_planar_K2"


def _data(n: int = 200) -> torch.Tensor:
    return (torch.rand(n, 784, generator=torch.Generator().manual_seed(0)) < 0.3).float()


def _args(tmp_path: Path, **changes) -> argparse.Namespace:
    return argparse.Namespace(**{"command": "train", "mode": "fast", "weights_dir": None,
                                 "out": str(tmp_path / "out"), "overwrite": False,
                                 "threads": None, "device": "cpu", "ckpt_dir": str(tmp_path / "ckpt"),
                                 "max_minutes": None, "restart": False, **changes})


def test_the_training_step_stops_with_3_resumes_and_keeps_the_checkpoint_format(tmp_path, capsys) -> None:
    cfg = dataclasses.replace(FAST, hidden=16, updates=10, batch_size=20)
    x = _data()
    assert runner.train_command(cfg, _args(tmp_path), prog="prog", x_train=x, stop_at=4, progress=False) == 3
    path = checkpoint_path(cfg, tmp_path / "ckpt")
    assert f"stopped at update 4/10; checkpoint {path}" in capsys.readouterr().out
    state = torch.load(path, weights_only=False)
    assert set(state) == {*KEYS, "valid_log", "best", "planar_impl"} and state["step"] == 4
    run = runner.train_command(cfg, _args(tmp_path), prog="prog", x_train=x, progress=False)
    assert run.finished and run.resumed_from == 4


def test_the_training_step_refuses_another_configurations_result_with_2(tmp_path, capsys) -> None:
    cfg = dataclasses.replace(FAST, hidden=16, updates=10, batch_size=20)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mnist_fast_diagonal.json").write_text(json.dumps({"config": {"train": {"lr": 1.0}}}))
    assert runner.train_command(cfg, _args(tmp_path), prog="prog", x_train=_data()) == 2
    assert capsys.readouterr().err.startswith("prog train: error: ")
    assert runner.train_command(cfg, _args(tmp_path), prog="prog", evaluate=False, x_train=_data(),
                                progress=False).finished  # --no-eval writes no result: nothing to refuse


def test_load_finished_run_names_what_is_missing(tmp_path) -> None:
    cfg = dataclasses.replace(FAST, hidden=16, updates=10, batch_size=20)
    with pytest.raises(CheckpointError, match="no checkpoint .*train this configuration first"):
        runner.load_finished_run(cfg, tmp_path)
    runner.train_command(cfg, _args(tmp_path, ckpt_dir=str(tmp_path)), prog="p", evaluate=False, x_train=_data(),
                         stop_at=3, progress=False)
    with pytest.raises(CheckpointError, match="at update 3/10; finish training first"):
        runner.load_finished_run(cfg, tmp_path)


def test_pick_device(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runner.pick_device("auto") == runner.pick_device(None) == torch.device("cpu")
    assert runner.pick_device("cuda:1") == torch.device("cuda:1")  # as given: check_device refuses it first


def test_option_checks_name_the_option_and_the_range() -> None:
    with pytest.raises(OptionError, match=r"^--n must be in 1\.\.5 \(why\), got 9$"):
        check_int("--n", 9, 1, 5, " (why)")
    with pytest.raises(OptionError, match=r"^--x must be a finite number ≥ 0 and < 1, got nan$"):
        check_float("--x", float("nan"), 0.0, lo_inclusive=True, hi=1.0, hi_inclusive=False)
    with pytest.raises(OptionError, match="--device must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        check_device("--device", "gpu")
    check_int("--n", None, 1)  # not given
    check_device("--device", "cpu")


def _tiny_run(tmp_path: Path, updates: int, label: str = "race"):
    cfg = dataclasses.replace(FAST, hidden=16, updates=updates, batch_size=20, eval_points=5, eval_samples=2,
                              label=label)
    return runner.train_command(cfg, _args(tmp_path, ckpt_dir=str(tmp_path / f"ckpt{updates}")), prog="p",
                                evaluate=False, x_train=_data(), progress=False)


def test_of_two_runs_writing_one_name_the_later_is_refused_and_the_pair_stays_matched(tmp_path, monkeypatch) -> None:
    """Issue 26, bug 4: run B (31 updates) stores the name after run A (30 updates, same --label, --out
    and --weights-dir) has checked that the name is free, before A writes; A is then refused (the check is
    repeated under the lock) before it replaces anything, and the stored result and weights are both B's."""
    run_a, run_b = _tiny_run(tmp_path, 30), _tiny_run(tmp_path, 31)
    out, weights = tmp_path / "out", tmp_path / "w"
    name = run_a.config.result_name("planar", 0)
    stored: dict[Path, bytes] = {}
    real_round, b_started = pretrained.round_like_saved, []

    def b_finishes_meanwhile(model):  # A has checked the name and prepares its weights
        if not b_started:
            b_started.append(run_b)
            runner.finish(run_b, device="cpu", out_dir=out, x_test=_data(5), weights_dir=weights)
            stored.update({p: p.read_bytes() for p in (out / f"{name}.json", weights / f"{name}.pt")})
        return real_round(model)

    monkeypatch.setattr(pretrained, "round_like_saved", b_finishes_meanwhile)
    with pytest.raises(FileExistsError, match="another configuration"):
        runner.finish(run_a, device="cpu", out_dir=out, x_test=_data(5), weights_dir=weights)
    assert len(stored) == 2 and all(p.read_bytes() == content for p, content in stored.items())
    assert json.loads((out / f"{name}.json").read_text())["config"]["train"]["updates"] == 31


def test_a_failed_write_leaves_no_half_pair(tmp_path, monkeypatch) -> None:
    """The weights and the result of a row are written together or not at all: when the result cannot
    be written, the weights this call wrote are removed, and with --overwrite the earlier pair is put back."""
    run = _tiny_run(tmp_path, 10, label="")
    out, weights = tmp_path / "out", tmp_path / "w"

    def full_disk(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(runner, "save_result", full_disk)
        with pytest.raises(OSError, match="No space"):
            runner.finish(run, device="cpu", out_dir=out, x_test=_data(5), weights_dir=weights)
    assert not list(weights.glob("*.pt")) and not list(out.glob("*.json"))
    runner.finish(run, device="cpu", out_dir=out, x_test=_data(5), weights_dir=weights)
    before = {p: p.read_bytes() for p in (*out.glob("*.json"), *weights.glob("*.pt"))}
    with monkeypatch.context() as m:
        m.setattr(runner, "save_result", full_disk)
        with pytest.raises(OSError, match="No space"):
            runner.finish(_tiny_run(tmp_path, 11, label=""), device="cpu", out_dir=out, x_test=_data(5),
                          weights_dir=weights, overwrite=True)
    assert {p: p.read_bytes() for p in (*out.glob("*.json"), *weights.glob("*.pt"))} == before

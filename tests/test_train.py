"""Tests of flowbook.trainer (exact resumption, batched rows, evaluation), binarized MNIST's experiment
(flowbook.train) and the CLI."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flowbook.models import DLGM, DLGMConfig
from flowbook import train as train_module
from flowbook import trainer
from flowbook.checkpoints import CheckpointError, checkpoint_path
from flowbook.runner import finish
from flowbook.train import FAST, TrainConfig, evaluate, parse_rows, train

ROOT = Path(__file__).resolve().parent.parent
TINY = dataclasses.replace(FAST, hidden=16, updates=60, batch_size=20, beta_warmup=30, eval_points=40,
                           eval_samples=8)


def _data(n: int = 200, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 784, generator=g) < 0.3).float()


pytestmark = pytest.mark.usefixtures("one_thread")


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_parse_rows():
    assert parse_rows("planar:0, planar:10,nice:80") == (("planar", 0), ("planar", 10), ("nice", 80))
    with pytest.raises(ValueError, match="FLOW:K"):
        parse_rows("planar10")


@pytest.mark.parametrize("rows", [(("planar", 3),), (("planar", 0), ("nice", 2))])
def test_interrupted_run_resumes_bit_for_bit(tmp_path, rows):
    cfg = dataclasses.replace(TINY, rows=rows)
    x = _data()
    straight = train(cfg, x_train=x, ckpt_dir=tmp_path / "a", ckpt_every=7, log_every=10)
    first = train(cfg, x_train=x, ckpt_dir=tmp_path / "b", ckpt_every=7, log_every=10, stop_at=33)
    assert first.step == 33 and not first.finished
    resumed = train(cfg, x_train=x, ckpt_dir=tmp_path / "b", ckpt_every=7, log_every=10)
    assert resumed.resumed_from == 33 and resumed.finished
    assert _same_state(straight.model.state_dict(), resumed.model.state_dict())
    assert [e["free_energy"] for e in straight.log] == [e["free_energy"] for e in resumed.log]


def test_a_checkpoint_of_another_config_is_not_resumed(tmp_path):
    x = _data()
    train(dataclasses.replace(TINY, updates=10), x_train=x, ckpt_dir=tmp_path)
    other = dataclasses.replace(TINY, updates=10, lr=2e-3)
    assert checkpoint_path(other, tmp_path) != checkpoint_path(dataclasses.replace(TINY, updates=10), tmp_path)
    assert train(other, x_train=x, ckpt_dir=tmp_path).resumed_from is None


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
def test_a_row_of_the_batched_trainer_equals_the_single_model_trainer(optimizer):
    x = _data()
    base = dataclasses.replace(TINY, updates=25, dtype="float64", optimizer=optimizer)
    multi = train(dataclasses.replace(base, rows=(("planar", 0), ("planar", 3), ("radial", 2))), x_train=x)
    for r, row in enumerate(multi.model.rows()):
        single = train(dataclasses.replace(base, rows=(multi.config.rows[r],)), x_train=x)
        for (name, p), (_, q) in zip(row.named_parameters(), single.model.named_parameters()):
            # float64 rounding differs between batched and plain matrix products (≈1e-17); RMSprop's
            # normalized steps amplify it to ≈1e-10 over 25 updates
            torch.testing.assert_close(p, q, rtol=1e-7, atol=1e-9, msg=f"row {r}, {name}")
        assert abs(multi.log[-1]["free_energy"][r] - single.log[-1]["free_energy"][0]) < 1e-6


def test_training_lowers_the_free_energy():
    """Data with structure (two prototypes, 5 % of pixels flipped): the bound must fall far below its start."""
    g = torch.Generator().manual_seed(0)
    prototypes = (torch.rand(2, 784, generator=g) < 0.5).float()
    x = prototypes[torch.randint(2, (400,), generator=g)]
    x = torch.where(torch.rand(x.shape, generator=g) < 0.05, 1 - x, x)
    run = train(dataclasses.replace(TINY, updates=300, beta_warmup=1), x_train=x, log_every=10)
    # start ≈ 784 ln 2 ≈ 543 nats; the best possible is ≈ 784·H(0.05) + ln 2 ≈ 157
    assert run.log[0]["free_energy"][0] > 450 and run.log[-1]["free_energy"][0] < 400


def test_evaluation_bound_and_importance_estimate():
    torch.manual_seed(0)
    model = DLGM(DLGMConfig(flow="planar", K=2, hidden=16))
    x = _data(30)
    one = evaluate(model, x, samples=1, batch=10)
    assert abs(one["neg_elbo"] - one["neg_log_p"]) < 1e-4 and abs(one["kl"]) < 1e-4  # S = 1: the same number
    many = evaluate(model, x, samples=64, batch=10, chunk=16)
    assert many["kl"] > 0  # log-mean-exp ≥ mean, point by point
    assert many["points"] == 30 and many["samples"] == 64
    # chunking does not change the estimate's distribution; with a fixed seed and one chunk it is identical
    assert evaluate(model, x, samples=64, batch=10, chunk=64)["neg_log_p"] == pytest.approx(
        evaluate(model, x, samples=64, batch=10, chunk=64)["neg_log_p"])


def test_finish_writes_one_result_per_row_with_provenance(tmp_path):
    cfg = dataclasses.replace(TINY, updates=5, rows=(("planar", 0), ("planar", 2)), label="test")
    run = train(cfg, x_train=_data())
    out = finish(run, device="cpu", out_dir=tmp_path, command="pytest", x_test=_data(40, seed=1))
    assert set(out) == {"mnist_fast_test_diagonal", "mnist_fast_test_planar_K2"}
    rec = json.loads((tmp_path / "mnist_fast_test_planar_K2.json").read_text())
    for key in ("command", "commit", "device", "date", "wall_time_s", "config", "metrics"):
        assert key in rec
    assert rec["config"]["binarization"].startswith(("sampled-seed-", "larochelle-murray"))
    assert rec["config"]["model"]["K"] == 2 and rec["config"]["train"]["updates"] == 5
    assert rec["metrics"]["points"] == 40
    # the implementation that actually ran (the compiled kernel, or the PyTorch loop and why)
    from flowbook import flows

    assert rec["config"]["planar_impl"] == rec["config"]["flow_impl"] == flows.planar_impl("cpu", "float32")
    diagonal = json.loads((tmp_path / "mnist_fast_test_diagonal.json").read_text())["config"]
    assert diagonal["flow_impl"].startswith("none") and "planar_impl" not in diagonal  # no flow ran there
    assert "planar_kernel" not in rec["config"]


def _damage(path: Path, how: str) -> None:
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(torch.randint(0, 256, (5000,), generator=torch.Generator().manual_seed(0),
                                       dtype=torch.uint8).numpy().tobytes())


@pytest.mark.parametrize("how", ["empty", "truncated", "random"])
def test_a_damaged_checkpoint_is_named_and_restart_starts_over(tmp_path, how):
    cfg = dataclasses.replace(TINY, updates=10)
    x = _data()
    train(cfg, x_train=x, ckpt_dir=tmp_path, stop_at=5)
    path = checkpoint_path(cfg, tmp_path)
    _damage(path, how)
    with pytest.raises(CheckpointError, match="damaged") as err:
        train(cfg, x_train=x, ckpt_dir=tmp_path)
    assert str(path) in str(err.value) and "delete it" in str(err.value) and "--restart" in str(err.value)
    run = train(cfg, x_train=x, ckpt_dir=tmp_path, restart=True)
    assert run.resumed_from is None and run.finished
    straight = train(cfg, x_train=x)
    assert _same_state(run.model.state_dict(), straight.model.state_dict())
    assert train(cfg, x_train=x, ckpt_dir=tmp_path).resumed_from == 10  # the new checkpoint is sound


def test_a_damaged_checkpoint_is_found_before_the_data_loads(tmp_path, monkeypatch):
    cfg = dataclasses.replace(TINY, updates=10)
    path = checkpoint_path(cfg, tmp_path)
    path.write_bytes(b"")

    def no_data(*args, **kwargs):
        raise AssertionError("the data were loaded before the checkpoint was checked")

    monkeypatch.setattr(train_module.fdata, "binarized_mnist", no_data)
    with pytest.raises(CheckpointError, match="damaged"):
        train(cfg, ckpt_dir=tmp_path)


def test_a_checkpoint_whose_stored_config_differs_is_refused(tmp_path):
    cfg = dataclasses.replace(TINY, updates=10)
    x = _data()
    train(cfg, x_train=x, ckpt_dir=tmp_path, stop_at=5)
    path = checkpoint_path(cfg, tmp_path)
    state = torch.load(path, weights_only=False)
    state["config"]["eval_points"] = 7  # evaluation settings may differ: the trained run is the same
    torch.save(state, path)
    assert train(cfg, x_train=x, ckpt_dir=tmp_path, stop_at=6).resumed_from == 5
    state = torch.load(path, weights_only=False)
    state["config"]["lr"] = 0.5  # e.g. a renamed file, or a digest collision
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"belongs to another configuration \(lr: 0\.5 in the checkpoint, "
                                              r"0\.001 now\)"):
        train(cfg, x_train=x, ckpt_dir=tmp_path)


def test_an_unwritable_checkpoint_directory_fails_at_once(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(CheckpointError, match=f"checkpoint directory {blocker / 'ckpt'} is not writable"):
        train(TINY, x_train=torch.zeros(0, 784), ckpt_dir=blocker / "ckpt")  # no update runs before the check
    train(dataclasses.replace(TINY, updates=2), x_train=_data(), ckpt_dir=tmp_path / "new" / "dir")
    assert list((tmp_path / "new" / "dir").glob("*.pt")), "a missing directory is created"


def test_temporaries_of_killed_saves_are_removed_and_live_ones_kept(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # its pid is now free: a save of that process can never finish
    dead = tmp_path / f"mnist_fast_diagonal_0123456789ab.pt.tmp{proc.pid}"
    live = tmp_path / f"mnist_fast_diagonal_0123456789ab.pt.tmp{os.getppid()}"
    other = tmp_path / "notes.tmp1"
    for p in (dead, live, other):
        p.write_bytes(b"partial")
    train(dataclasses.replace(TINY, updates=2), x_train=_data(), ckpt_dir=tmp_path)
    assert not dead.exists() and live.exists() and other.exists()


def test_a_failed_save_keeps_the_previous_checkpoint_and_leaves_no_temporary(tmp_path, monkeypatch):
    cfg = dataclasses.replace(TINY, updates=10)
    x = _data()
    train(cfg, x_train=x, ckpt_dir=tmp_path, stop_at=5)
    path = checkpoint_path(cfg, tmp_path)
    before = path.read_bytes()

    def disk_full(obj, f):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match=f"could not write checkpoint {path} .*No space left"):
        train(cfg, x_train=x, ckpt_dir=tmp_path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.slow
def test_kill_9_and_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path):
    """The CLI on binarized MNIST: SIGKILL mid-run, run the same command again, compare bit for bit."""
    from flowbook.data import DataFileError, binarized_mnist

    try:
        binarized_mnist("train")
    except DataFileError as err:
        pytest.skip(f"no binarized MNIST: {err}")
    common = ["-m", "flowbook", "train", "--rows", "planar:0,planar:5", "--updates", "400", "--hidden", "40",
              "--ckpt-every", "20", "--threads", "1", "--no-eval", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, *common, "--ckpt-dir", str(tmp_path / "a")], check=True, cwd=ROOT, env=env,
                   capture_output=True)
    proc = subprocess.Popen([sys.executable, *common, "--ckpt-dir", str(tmp_path / "b")], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_b = next(iter((tmp_path / "a").glob("*.pt"))).name
    deadline = time.time() + 300
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        path = tmp_path / "b" / ckpt_b
        if path.exists():
            step = torch.load(path, weights_only=False)["step"]
            if step >= 100:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed_at = step
                break
        time.sleep(0.05)
    assert killed_at is not None and killed_at < 400, "the run ended before it could be killed"
    subprocess.run([sys.executable, *common, "--ckpt-dir", str(tmp_path / "b")], check=True, cwd=ROOT, env=env,
                   capture_output=True)
    a = torch.load(tmp_path / "a" / ckpt_b, weights_only=False)
    b = torch.load(tmp_path / "b" / ckpt_b, weights_only=False)
    assert a["step"] == b["step"] == 400
    assert _same_state(a["model"], b["model"])
    assert a["log"] == b["log"]


def test_no_checkpoint_holds_a_diverged_state(tmp_path):
    """Issue 26, bug 7: with a checkpoint every 10 updates and a rate that blows up, every checkpoint
    written holds finite parameters (NaN was checked only every 100 updates), and the error mentions
    --restart."""
    cfg = dataclasses.replace(TINY, updates=100, lr=1e4)
    with pytest.raises(FloatingPointError, match="NaN or infinite.*--restart"):
        train(cfg, x_train=_data(), ckpt_dir=tmp_path, ckpt_every=10)
    for path in tmp_path.glob("*.pt"):
        state = torch.load(path, weights_only=False)
        assert all(torch.isfinite(t).all() for t in state["model"].values()), f"{path} holds NaN"


def test_a_checkpoint_with_nan_parameters_is_refused_with_restart(tmp_path):
    """A diverged checkpoint written by an earlier version is refused at once, not resumed into NaN."""
    cfg = dataclasses.replace(TINY, updates=10)
    train(cfg, x_train=_data(), ckpt_dir=tmp_path, stop_at=5)
    path = checkpoint_path(cfg, tmp_path)
    state = torch.load(path, weights_only=False)
    next(iter(state["model"].values())).fill_(float("nan"))
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="NaN or infinite parameters.*--restart"):
        train(cfg, x_train=_data(), ckpt_dir=tmp_path)


def test_a_resume_on_the_other_planar_implementation_is_refused(tmp_path):
    """Issue 26, bug 17: the checkpoint records the planar chain (C kernel or PyTorch loop, which give
    different trajectories); resuming it on the other one is refused. The config's digest, which names
    the stored runs, does not change."""
    cfg = dataclasses.replace(TINY, rows=(("planar", 2),), updates=10)
    digest = cfg.digest()
    train(cfg, x_train=_data(), ckpt_dir=tmp_path, stop_at=5)
    path = checkpoint_path(cfg, tmp_path)
    state = torch.load(path, weights_only=False)
    assert state["planar_impl"] == trainer._planar_impl(cfg, torch.device("cpu"))
    assert state["planar_impl"] in ("flowbook.kernels.native planar_chain", "flowbook.kernels.fused.planar_chain")
    state["planar_impl"] = "flowbook.kernels.elsewhere planar_chain"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="planar chain 'flowbook.kernels.elsewhere planar_chain'"):
        train(cfg, x_train=_data(), ckpt_dir=tmp_path)
    assert cfg.digest() == digest and path.name.endswith(f"_{digest}.pt")


# --- continuation stages (a stored row continued from its committed weights) ---

def test_the_rate_warms_up_linearly_then_decays_to_its_final_value() -> None:
    cfg = dataclasses.replace(TINY, updates=100, lr=1e-3, lr_final=1e-5, warmup=10)
    assert cfg.lr_at(0) == pytest.approx(1e-4) and cfg.lr_at(9) == pytest.approx(1e-3)
    assert cfg.lr_at(10) == pytest.approx(1e-3) and cfg.lr_at(100) == pytest.approx(1e-5)
    rates = [cfg.lr_at(t) for t in range(10, 101)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))  # the cosine only decreases
    assert dataclasses.replace(cfg, warmup=0).lr_at(0) == pytest.approx(1e-3)  # no warm-up: as before


def test_later_fields_at_their_neutral_value_leave_a_stored_rows_identity_alone() -> None:
    from flowbook.results import load_result
    from flowbook.runid import config_digest

    stored = load_result(ROOT / "data/results/mnist_stored_updates120k_planar_K80.json")["config"]["train"]
    cfg = dataclasses.replace(train_module.STORED, rows=(("planar", 80),), updates=120_000, label="updates120k")
    assert "ema_decay" not in stored and config_digest(stored) == cfg.digest()
    assert dataclasses.replace(cfg, ema_decay=0.999).digest() != cfg.digest()


def test_the_average_follows_the_parameters_with_its_decay_and_is_swapped_in_and_back() -> None:
    model = torch.nn.Linear(3, 2)
    start = [p.detach().clone() for p in model.parameters()]
    avg = train_module.Averager(model, 0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    avg.update()
    for a, s in zip(avg.state(), start):
        torch.testing.assert_close(a, s + 0.1)  # s + (1 − 0.9)·((s + 1) − s)
    with avg.swapped_in():
        for p, s in zip(model.parameters(), start):
            torch.testing.assert_close(p.detach(), s + 0.1)
    for p, s in zip(model.parameters(), start):
        torch.testing.assert_close(p.detach(), s + 1.0)


def test_a_stage_starts_from_the_committed_weights_it_names_and_records_the_chain(tmp_path) -> None:
    from flowbook import pretrained

    # from the row's latest stage: only its weights stay in the tree
    latest = pretrained.latest_stage("planar", 10)
    done = int(latest.removeprefix("updates").removesuffix("k")) * 1000
    stage = train_module.continuation("planar", 10, latest)
    assert stage["updates_before"] == done and stage["beta_start"] == 1.0
    cfg = dataclasses.replace(train_module.STORED, rows=(("planar", 10),), updates=3, valid_every=0,
                              label="stage-test", lr=1e-12, lr_final=None, **stage)
    run = train(cfg, x_train=_data(300))
    start = pretrained.load_file(ROOT / stage["init_from"])
    for (k, a), b in zip(run.model.state_dict().items(), start.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=k)  # a rate of 1e-12 barely moves them
    # the chain: the stages behind the weights it starts from, then those weights
    behind = pretrained.stored_results("mnist", label=latest)[("planar", 10)]["config"].get("chain", [])
    assert train_module.stage_chain(cfg) == [*behind, {"weights": stage["init_from"], "sha256": stage["init_sha256"],
                                                       "updates": done}]
    with pytest.raises(ValueError, match="sha256"):
        train(dataclasses.replace(cfg, init_sha256="0" * 64), x_train=_data(300))
    other = dataclasses.replace(cfg, rows=(("planar", 20),))
    with pytest.raises(ValueError, match="holds the row"):
        train(other, x_train=_data(300))


def test_a_stage_cannot_reuse_the_label_it_starts_from(tmp_path) -> None:
    out = subprocess.run([sys.executable, "-m", "flowbook", "train", "--mode", "stored", "--flow", "planar",
                          "--K", "10", "--continue-from", "updates120k", "--label", "updates120k",
                          "--ckpt-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "a --label of its own" in out.stderr and "Traceback" not in out.stderr


def test_fused_adam_takes_the_same_steps_as_the_default_one() -> None:
    x = _data(200)
    plain = train(dataclasses.replace(TINY, updates=20), x_train=x)
    fused = train(dataclasses.replace(TINY, updates=20, fused=True), x_train=x)
    for (k, a), b in zip(plain.model.state_dict().items(), fused.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=k)
    assert dataclasses.replace(TINY, fused=True).digest() != TINY.digest()


def test_paper_table2_is_the_papers_table() -> None:
    # the values as printed in the paper's text (../shared/paper beside the clone, as in CI)
    import re
    texts = sorted((ROOT.parent / "shared" / "paper").glob("*.txt"))
    if not texts:
        pytest.skip("the paper's text (../shared/paper) is not beside this clone")
    text = "\n".join(p.read_text(encoding="utf-8") for p in texts)
    printed = {("diagonal", 0): float(re.search(r"DLGM diagonal covariance\s*\$\\leq ([\d.]+)\$", text)[1])}
    for name, flow in (("NF", "planar"), ("NICE", "nice")):
        for K, value in re.findall(rf"DLGM\+{name} \(k = (\d+)\)\s*\$\\leq ([\d.]+)\$", text):
            printed[flow, int(K)] = float(value)
    assert printed == train_module.PAPER_TABLE2

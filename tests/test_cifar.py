"""Tests of flowbook.cifar: the units of Table 3, the patch pipeline, and a tiny end-to-end run."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch.autograd.functional import jacobian

from flowbook import cifar, cifarcli, data
from flowbook.models import logit_normal_log_likelihood


def test_patch_dimension_and_paper_table():
    assert cifar.PATCH_DIM == 192
    assert list(cifar.PAPER_TABLE3) == list(cifar.KS) == [0, 2, 5, 10]
    values = list(cifar.PAPER_TABLE3.values())
    assert all(a > b for a, b in zip(values, values[1:])), "the paper's Table 3 improves with K"


def test_nats_per_patch_adds_the_squeeze_jacobian():
    # ln p_V(v) = ln p_Y(y) + ln|det dy/dv|, with y = eps + (1 - 2 eps) v: check the log-det by autograd
    eps, D = 1e-3, cifar.PATCH_DIM
    J = jacobian(lambda v: eps + (1 - 2 * eps) * v, torch.rand(D, dtype=torch.float64))
    log_det = torch.linalg.slogdet(J)[1].item()
    log_p_y = torch.tensor([100.0, -3.0], dtype=torch.float64)
    assert torch.allclose(cifar.nats_per_patch(log_p_y, D, eps), -(log_p_y + log_det), atol=1e-10)
    assert cifar.nats_per_patch(0.0, D, 0.0) == 0.0


def test_bits_per_dim():
    D = cifar.PATCH_DIM
    assert cifar.bpd_from_nats(0.0, D) == pytest.approx(8.0, abs=1e-12)  # uniform on [0,1)^D: raw bytes
    assert cifar.bpd_from_nats(-D * math.log(256), D) == pytest.approx(0.0, abs=1e-12)
    assert cifar.bpd_from_nats(-D * math.log(2), D) == pytest.approx(7.0, abs=1e-12)  # one bit saved per dim
    assert cifar.bpd_from_nats(-320.7, D) == pytest.approx(8 - 320.7 / (D * math.log(2)), abs=1e-12)
    # agrees with flowbook.data's route from ln p_Y(y) through the pixel scale
    log_p_y = torch.tensor([250.0, 330.0], dtype=torch.float64)
    via_data = data.bits_per_dim(data.pixel_space_log_density(log_p_y, D, cifar.EPS), D)
    assert torch.allclose(cifar.bpd_from_nats(cifar.nats_per_patch(log_p_y), D), via_data, atol=1e-12)


def test_unit_patches_range_inverse_and_seed():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (50, 3, 8, 8), generator=g, dtype=torch.uint8)
    x[0] = 0
    x[1] = 255
    y = cifar.unit_patches(x, seed=5)
    assert y.shape == (50, 192) and y.dtype == torch.float32
    assert y.min() >= cifar.EPS and y.max() <= 1 - cifar.EPS
    assert torch.equal(y, cifar.unit_patches(x, seed=5))
    assert not torch.equal(y, cifar.unit_patches(x, seed=6))
    v = (y.double() - cifar.EPS) / (1 - 2 * cifar.EPS)
    # dequantization keeps the bin: 256 v in [x, x + 1], up to float32 rounding at the edges
    assert ((256 * v.reshape(x.shape) - x.double() - 0.5).abs() <= 0.5 + 1e-4).all()
    pictures = cifar.to_pixels(y)
    assert pictures.shape == (50, 3, 8, 8)
    assert torch.allclose(pictures, (x.double() / 256).float(), atol=1 / 256 + 1e-6)


def test_unit_patches_rejects_floats():
    with pytest.raises(ValueError, match="uint8"):
        cifar.unit_patches(torch.rand(2, 3, 8, 8))


def test_logit_normal_is_a_density_on_patches_scale():
    # 1-D quadrature of exp(ln p) over (0, 1) with the likelihood the models use
    mean, log_sigma = torch.tensor([0.7], dtype=torch.float64), torch.tensor([-1.2], dtype=torch.float64)
    t = torch.linspace(-30, 30, 300_001, dtype=torch.float64)  # integrate over a = logit(y): dy = y(1-y) da
    y = torch.sigmoid(t)
    dens = torch.exp(logit_normal_log_likelihood(y[:, None], mean, log_sigma)) * y * (1 - y)
    assert torch.trapezoid(dens, t).item() == pytest.approx(1.0, abs=1e-8)


def test_config_rows_share_a_trunk_and_use_patch_dims():
    for cfg in (cifar.FAST, cifar.FULL):
        configs = cfg.model_configs()
        assert [c.K for c in configs] == list(cifar.KS)
        assert {c.data_dim for c in configs} == {192} and {c.latent for c in configs} == {30}
        assert {c.likelihood for c in configs} == {"logit_normal"}
    assert cifar.FULL.optimizer == "rmsprop" and cifar.FULL.lr == 1e-5 and cifar.FULL.beta_warmup == 10_000
    assert cifar.config_for("full") is cifar.FULL
    with pytest.raises(ValueError):
        cifar.config_for("slow")


def test_tiny_run_trains_evaluates_and_saves(tmp_path):
    """A few updates on synthetic patches: the trainer runs, the metrics are in nats per patch of v."""
    cfg = dataclasses.replace(cifar.FAST, rows=(("planar", 0), ("planar", 2)), updates=30, hidden=40,
                              n_train=400, eval_points=20, eval_samples=8, beta_warmup=10)
    g = torch.Generator().manual_seed(1)
    x_train = cifar.unit_patches(torch.randint(0, 256, (400, 3, 8, 8), generator=g, dtype=torch.uint8), seed=1)
    x_test = cifar.unit_patches(torch.randint(0, 256, (20, 3, 8, 8), generator=g, dtype=torch.uint8), seed=2)
    from flowbook.train import train

    run = train(cfg, x_train=x_train, progress=False)
    assert run.finished and len(run.log) >= 1
    metrics = cifar.finish(run, device="cpu", out_dir=tmp_path, command="test", x_test=x_test)
    assert set(metrics) == {0, 2}
    for K, m in metrics.items():
        assert math.isfinite(m["neg_log_p"]) and m["neg_log_p"] <= m["neg_elbo"] + 1e-6  # IS is tighter
        assert m["bpd"] == pytest.approx(cifar.bpd_from_nats(m["neg_log_p"]), abs=1e-9)
        record = json.loads((tmp_path / f"{cfg.result_name('planar', K)}.json").read_text())
        assert record["metrics"]["neg_log_p"] == pytest.approx(m["neg_log_p"])
        assert record["config"]["model"]["data_dim"] == 192


@pytest.mark.slow
def test_real_test_patches_are_fixed():
    cfg = dataclasses.replace(cifar.FAST, eval_points=100)
    try:
        a = cifar.test_data(cfg)
    except data.DataFileError as err:
        pytest.skip(f"no CIFAR-10 in the data root: {err}")
    assert torch.equal(a, cifar.test_data(cfg))
    assert a.shape == (100, 192)


def _fake_result(directory, name, K, label="", updates_done=cifar.FULL.updates):
    from flowbook.results import save_result

    save_result(name, config={"train": {"label": label}, "model": {"K": K}, "updates_done": updates_done},
                metrics={"neg_log_p": -300.0 - K}, wall_time_s=1.0, device="cpu", command="test", directory=directory)


def test_load_full_results_keeps_only_complete_unlabelled_runs(tmp_path):
    _fake_result(tmp_path, "cifar10_full_diagonal", 0)
    _fake_result(tmp_path, "cifar10_full_dry-run_planar_K2", 2, label="dry-run")
    _fake_result(tmp_path, "cifar10_full_planar_K5", 5, updates_done=100)
    _fake_result(tmp_path, "cifar10_fast_planar_K10", 10)
    assert set(cifar.load_full_results(tmp_path)) == {0}
    assert cifar.load_full_results(tmp_path / "empty") == {}


def test_cli_dry_run_writes_labelled_results(tmp_path, capsys):
    args = ["train", "--mode", "full", "--K", "0,2", "--updates", "4", "--n-train", "200", "--eval-points", "10",
            "--eval-samples", "4", "--label", "dry-run", "--seed", "3", "--device", "cpu", "--out", str(tmp_path / "res"),
            "--ckpt-dir", str(tmp_path / "ckpt")]
    try:
        data.load_cifar10("test", download=False)
    except data.DataFileError as err:
        pytest.skip(f"no CIFAR-10 in the data root: {err}")
    assert cifarcli.main(args) == 0
    record = json.loads((tmp_path / "res" / "cifar10_full_dry-run_planar_K2.json").read_text())
    assert record["config"]["train"]["optimizer"] == "rmsprop" and record["config"]["updates_done"] == 4
    assert record["config"]["train"]["seed"] == 3 and record["config"]["model"]["seed"] == 3
    assert record["command"].startswith("python -m flowbook.cifar train --mode full")
    assert cifar.load_full_results(tmp_path / "res") == {}  # a dry run never counts as a full result
    assert "done: 4 updates" in capsys.readouterr().out


@pytest.mark.parametrize("options, names", [
    (["--K", "0,two"], "--K must be comma-separated flow lengths in 0..1000"),
    (["--K", "0,2.5"], "'2.5' is not a non-negative integer"),
    (["--K", "0,-2"], "'-2' is not a non-negative integer"),
    (["--K", "0,,5"], "--K must be comma-separated"),
    (["--K", "2,2"], "--K lists a flow length twice"),
    (["--K", "5000"], "--K must be in 0..1000"),
    (["--updates", "0"], "--updates must be ≥ 1"),
    (["--updates", "-5"], "--updates must be ≥ 1"),
    (["--n-train", "0"], "--n-train must be in 100..10000000"),
    (["--n-train", "99"], "--n-train must be in 100..10000000"),
    (["--eval-points", "-5"], "--eval-points must be in 1..100000"),
    (["--eval-points", "100001"], "--eval-points must be in 1..100000"),
    (["--eval-samples", "0"], "--eval-samples must be ≥ 1"),
    (["--max-minutes", "0"], "--max-minutes must be a finite number > 0"),
    (["--max-minutes", "nan"], "--max-minutes must be a finite number > 0"),
    (["--threads", "0"], "--threads must be ≥ 1"),
    (["--flow-option", "hidden=3"], "--flow-option: 'hidden' is not an option of the planar flow (planar's options: "
                                    "impl (str), inverse_iters (int))"),
    (["--flow-option", "impl=gpu"], "PlanarSpec: impl must be one of ('auto', 'autograd', 'fused', 'native'), got 'gpu'"),
    (["--seed", "-3"], "--seed must be in 0..4294967295"),
    (["--label", "a/b"], "--label may hold only"),
    (["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N"),
])
def test_cli_refuses_bad_options_before_loading_data(tmp_path, refused, monkeypatch, options, names):
    def no_data(*args, **kwargs):
        raise AssertionError("the data were loaded before the options were checked")

    monkeypatch.setattr(cifar.fdata, "load_cifar10", no_data)
    assert names in refused(cifarcli.main, ["train", *options, "--ckpt-dir", str(tmp_path / "ckpt"),
                                         "--out", str(tmp_path / "out")])


def test_cli_refuses_cuda_without_cuda_and_unwritable_directories(tmp_path, refused, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for options, names in ((["--device", "cuda"], "--device cuda: CUDA is not available here"),
                           (["--ckpt-dir", str(blocker / "c")], f"--ckpt-dir {blocker / 'c'}: cannot write there"),
                           (["--out", str(blocker / "o")], f"--out {blocker / 'o'}: cannot write there")):
        assert names in refused(cifarcli.main, ["train", "--ckpt-dir", str(tmp_path / "ckpt"),
                                             "--out", str(tmp_path / "out"), *options])


def test_cli_refuses_another_configurations_result_before_loading_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cifar.fdata, "load_cifar10", lambda *a, **k: pytest.fail("data loaded"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "cifar10_fast_planar_K2.json").write_text(json.dumps({"config": {"train": {"lr": 9.0}}}))
    assert cifarcli.main(["train", "--K", "0,2", "--ckpt-dir", str(tmp_path / "ckpt"), "--out", str(out)]) == 2
    assert "cifar10_fast_planar_K2.json holds a result of another configuration" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04" + bytes(100)], ids=["empty", "truncated"])
def test_cli_ends_with_one_line_and_status_1_on_a_damaged_dataset(tmp_path, capsys, monkeypatch, content):
    """Issue 26, bug 6: a damaged cifar10.npz gives its message in one line, no traceback."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "cifar10.npz").write_bytes(content)
    monkeypatch.setenv("FLOWBOOK_DATA", str(root))
    argv = ["train", "--K", "0", "--updates", "2", "--n-train", "200", "--eval-points", "5", "--eval-samples", "2",
            "--ckpt-dir", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out")]
    assert cifarcli.main(argv) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("python -m flowbook.cifar: error: ") and str(root / "cifar10.npz") in line

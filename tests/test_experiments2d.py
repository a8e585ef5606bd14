"""Tests of flowbook.experiments2d: the batched fits must equal separate fits, exactly."""
from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import pytest
import torch

from flowbook import energies, flows, runid, runner
from flowbook import experiments2d as E
from flowbook.checkpoints import checkpoint_path, load_checkpoint
from flowbook.objectives import free_energy
from flowbook.options import parse_checked


def _perturb(group: E.FitGroup, seed: int = 0) -> E.FitGroup:
    """Random parameters everywhere (the initial NICE couplings are identities, which would hide errors)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in group.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return group.double()


@pytest.mark.parametrize("family, labels", [
    ("planar", [("U1", "planar", 3), ("U2", "planar", 1), ("U2", "planar", 4)]),
    ("radial", [("U3", "radial", 2), ("U1", "radial", 5)]),
    ("nice", [("U1", "nice-orth", 3), ("U2", "nice-perm", 3), ("U4", "nice-orth", 3)]),
])
def test_batched_flow_equals_each_fit_alone(family, labels):
    """Every fit of a group, run batched (padded layers, NICE with a fit axis), equals its own flows.* call."""
    g = _perturb(E.FitGroup(family, labels, nice_hidden=5, generator=torch.Generator().manual_seed(1)))
    z = torch.randn(g.n_fits, 7, 2, dtype=torch.float64)
    zK, log_det = g.flow(z)
    for f in range(g.n_fits):
        zf, ldf = g.spec.forward(z[f], g.fit_params(f))
        torch.testing.assert_close(zK[f], zf, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(log_det[f], ldf, rtol=1e-10, atol=1e-10)


def test_batched_nice_equals_the_module():
    """A NICE fit taken from a group is the flows.additive_coupling of its own 2-D parameters,
    with a mixing that is orthogonal (|det| = 1) or a permutation matrix."""
    g = _perturb(E.FitGroup("nice", [("U1", "nice-orth", 4), ("U2", "nice-perm", 4)], nice_hidden=3,
                            generator=torch.Generator().manual_seed(2)))
    for f in range(2):
        w1, b1, w2, b2, mixing = g.fit_params(f).values()
        assert w1.shape == (4, 3, 1) and w2.shape == (4, 1, 3) and mixing.shape == (4, 2, 2)
        eye = torch.eye(2, dtype=mixing.dtype).expand(4, 2, 2)
        torch.testing.assert_close(mixing @ mixing.transpose(-1, -2), eye)
    perm = g.fit_params(1)["mixing"]
    assert set(perm.flatten().tolist()) <= {0.0, 1.0}


def test_padded_layers_are_identities():
    """A planar or radial fit of length K in a group of length Kmax > K ignores the extra layers."""
    for family in ("planar", "radial"):
        g = _perturb(E.FitGroup(family, [("U1", family, 2), ("U1", family, 6)]))
        z = torch.randn(2, 5, 2, dtype=torch.float64)
        zK, log_det = g.flow(z)
        params = [p[0, :2] for p in g.params().values()]
        fn = flows.planar if family == "planar" else flows.radial
        zr, ldr = fn(z[0], *params)
        torch.testing.assert_close(zK[0], zr)
        torch.testing.assert_close(log_det[0], ldr)


def test_log_prob_matches_sampling_density():
    """ln q_K(z_K) returned with the samples equals ln q_K evaluated through the inverse flow."""
    for method, (family, _) in flows.variants().items():
        g = _perturb(E.FitGroup(family, [("U1", method, 3)], nice_hidden=4))
        zK, log_q = g.sample_fit(0, 50)
        torch.testing.assert_close(g.log_prob_fit(0, zK), log_q, rtol=1e-6, atol=1e-6)


def test_density_grid_integrates_to_mass_inside_box():
    """q_K from log_density_grid is a density: its integral over a box that holds q's mass is 1."""
    g = _perturb(E.FitGroup("radial", [("U1", "radial", 2)]), seed=3)
    with torch.no_grad():
        g.log_std.fill_(-1.0)
        g.mean.zero_()
    grid = E.log_density_grid(g, 0, n=200, box=6.0).double()
    mass = float(grid.exp().sum() * (12.0 / 200) ** 2)
    assert abs(mass - 1.0) < 1e-3


def test_batched_gradient_is_each_fits_own_gradient():
    """The batched loss has, for every fit's parameters, the gradient of that fit's own free energy
    (flowbook.objectives.free_energy computed alone): so one Adam step trains each fit as if alone."""
    beta, n = 0.3, 16
    groups = [_perturb(E.FitGroup("planar", [("U1", "planar", 2), ("U3", "planar", 4)])),
              _perturb(E.FitGroup("nice", [("U2", "nice-orth", 3), ("U4", "nice-perm", 3)], nice_hidden=4))]
    potentials = {t: E.target_potential(t) for t in ("U1", "U2", "U3", "U4")}
    loss, _ = E.annealed_free_energy(groups, potentials, n, beta, torch.Generator().manual_seed(5))
    batched = torch.autograd.grad(loss, [p for g in groups for p in g.parameters()])

    gen = torch.Generator().manual_seed(5)  # the same draws, fit by fit
    alone = 0.0
    for g in groups:
        z0, log_q0 = g.base_sample(n, gen)
        for f, (t, _, _) in enumerate(g.labels):
            zK, log_det = g.spec.forward(z0[f], g.fit_params(f))
            alone = alone + free_energy(log_q0[f], log_det, -potentials[t](zK), beta)
    own = torch.autograd.grad(alone, [p for g in groups for p in g.parameters()], allow_unused=True)
    torch.testing.assert_close(loss, alone, rtol=1e-10, atol=1e-10)
    for gb, go in zip(batched, own):
        torch.testing.assert_close(gb, torch.zeros_like(gb) if go is None else go, rtol=1e-9, atol=1e-10)


def test_short_training_lowers_kl_and_kl_is_positive():
    """A short run lowers each planar fit's KL, and the KL against the confined, normalized targets is ≥ 0
    (up to its Monte Carlo error)."""
    cfg = dataclasses.replace(E.FAST, Ks=(4,), methods=("planar",), updates=150, warmup=50, samples=64,
                              eval_samples=4000)
    log_Z = {t: energies.log_normalizer(E.target_potential(t), n=700) for t in cfg.targets}
    groups = E.build_groups(cfg)
    before = E.evaluate(groups, cfg, log_Z)
    E.train(groups, cfg)
    after = E.evaluate(groups, cfg, log_Z)
    for b, a in zip(before, after):
        assert a["KL"] < b["KL"]
        assert a["KL"] > -4 * a["se"]


def test_fit_state_round_trip(tmp_path):
    """A fit stored as JSON and rebuilt draws the same density."""
    cfg = dataclasses.replace(E.FAST, Ks=(2,), nice_hidden=4)
    for g in E.build_groups(cfg):
        _perturb(g).float()
        for f in (0, g.n_fits - 1):
            path = tmp_path / "fit.json"
            path.write_text(json.dumps(E.fit_state(g, f)))
            h = E.fit_from_state(json.loads(path.read_text()))
            torch.testing.assert_close(E.log_density_grid(h, 0, n=20), E.log_density_grid(g, f, n=20),
                                       rtol=1e-4, atol=1e-4)


def test_config_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown methods"):
        E.FitConfig(methods=("maf",))
    with pytest.raises(ValueError, match="unknown targets"):
        E.FitConfig(targets=("U9",))
    with pytest.raises(ValueError, match="one K only"):
        E.FitGroup("nice", [("U1", "nice-orth", 2), ("U1", "nice-orth", 3)])


def test_checkpoints_are_evaluated_mid_training():
    """run_experiment evaluates the fits at the requested update counts, before the final evaluation."""
    cfg = dataclasses.replace(E.FAST, targets=("U1",), methods=("planar", "nice-orth"), Ks=(2,), updates=6, warmup=3,
                              samples=8, eval_samples=200, nice_hidden=2)
    groups, rows, history = E.run_experiment(cfg, checkpoints=(3, 6))
    assert [c["update"] for c in history["checkpoints"]] == [3]   # the end is the final evaluation, not a checkpoint
    mid = history["checkpoints"][0]["rows"]
    assert [(r["method"], r["K"]) for r in mid] == [(r["method"], r["K"]) for r in rows]
    assert all(m["KL"] != r["KL"] for m, r in zip(mid, rows))


def test_the_package_keeps_its_public_names_and_command_line():
    """experiments2d is a package (model, training, cli) that re-exports its names and runs with -m."""
    import subprocess
    import sys

    from flowbook.experiments2d import cli, model, training

    assert E.FitGroup is model.FitGroup and E.train is training.train and E.main is cli.main
    assert not hasattr(E, "nice_fits")  # one NICE: the spec's, with per-example weights
    out = subprocess.run([sys.executable, "-m", "flowbook.experiments2d", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--mode" in out.stdout


def test_every_family_runs_through_its_spec():
    g = E.FitGroup("nice", [("U1", "nice-orth", 2)], nice_hidden=3)
    assert g.spec == flows.NiceSpec(2, 2, hidden=3)
    assert set(g.fit_params(0)) == set(flows.NiceSpec.names)
    assert E.FitGroup("planar", [("U1", "planar", 2)]).spec == flows.PlanarSpec(2, 2, impl="autograd", inverse_iters=60)


# ----------------------------------------------------------------------------------------------
# the 2-D experiment as a configuration of the runner: resumption, option checks, result files
# ----------------------------------------------------------------------------------------------
RESULTS = Path(__file__).resolve().parent.parent / "data" / "results"
TINY = dataclasses.replace(E.FAST, targets=("U1",), methods=("planar", "nice-orth"), Ks=(2,), updates=8, warmup=4,
                           samples=8, eval_samples=200, nice_hidden=2)
TINY_ARGS = ["--mode", "fast", "--targets", "U1", "--methods", "planar", "nice-orth", "--Ks", "2", "--updates", "8",
             "--samples", "8", "--nice-hidden", "2", "--eval-samples", "200", "--checkpoints", "4"]


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    """Stopped at update 5 and resumed from its checkpoint, a run ends with the parameters, mid-training
    evaluations, history and KL rows of a run that never stopped, bit for bit (the sampler's state is saved)."""
    path = tmp_path / "ck.pt"
    groups, rows, history = E.run_experiment(TINY, record_every=2, checkpoints=(3, 6),
                                             checkpointing=E.Checkpointing(path, every=2, stop_at=5))
    assert rows is None and history["updates_done"] == 5
    state = load_checkpoint(path, TINY, keys=E.CHECKPOINT_KEYS)
    assert state["step"] == 5
    resumed = E.run_experiment(TINY, record_every=2, checkpoints=(3, 6), resume=state,
                               checkpointing=E.Checkpointing(path, every=2))
    whole = E.run_experiment(TINY, record_every=2, checkpoints=(3, 6))
    for g, h in zip(resumed[0], whole[0]):
        for (name, a), b in zip(g.state_dict().items(), h.state_dict().values()):
            assert torch.equal(a, b), name
    assert resumed[1] == whole[1]
    for key in ("step", "beta", "F", "mean", "std", "checkpoints"):
        assert resumed[2][key] == whole[2][key], key
    assert [c["update"] for c in resumed[2]["checkpoints"]] == [3, 6]
    assert load_checkpoint(path, TINY, keys=E.CHECKPOINT_KEYS)["step"] == 8


def _cli(tmp_path, *extra, out="out", ckpt="ck"):
    return E.main([*TINY_ARGS, "--out", str(tmp_path / out), "--ckpt-dir", str(tmp_path / ckpt), *extra])


def test_the_command_stops_with_3_resumes_and_writes_the_uninterrupted_result(tmp_path, capsys):
    assert _cli(tmp_path, "--max-minutes", "1e-9") == 3  # out of time after its first update
    path = checkpoint_path(TINY, tmp_path / "ck")
    assert f"stopped at update 1/8; checkpoint {path}; run the same command again" in capsys.readouterr().out
    assert _cli(tmp_path, "--max-minutes", "1e-9") == 3  # one more update per piece
    assert torch.load(path, weights_only=False)["step"] == 2
    assert _cli(tmp_path) == 0
    assert _cli(tmp_path, out="whole", ckpt="ck-whole") == 0
    resumed, whole = (json.loads((tmp_path / d / "energy2d_fast.json").read_text()) for d in ("out", "whole"))
    for key in ("rows", "checkpoints", "curves", "fits", "log_Z"):
        assert resumed["metrics"][key] == whole["metrics"][key], key
    assert resumed["command"].startswith("python -m flowbook.experiments2d --mode fast")
    assert resumed["config"] == whole["config"] and E.FitConfig.trained_config(resumed["config"]) == json.loads(
        json.dumps(dataclasses.asdict(TINY)))
    assert {"commit", "device", "date", "wall_time_s"} <= set(resumed)


@pytest.mark.parametrize("options, names", [
    (["--updates", "0"], "--updates must be ≥ 1, got 0"),
    (["--samples", "1"], "--samples must be in 2..1000000"),
    (["--Ks", "2", "0"], "--Ks must be in 1..1000"),
    (["--seed", "-1"], "--seed must be in 0..4294967295"),
    (["--nice-hidden", "0"], "--nice-hidden must be in 1..4096"),
    (["--eval-samples", "1"], "--eval-samples must be in 2..100000000"),
    (["--checkpoints", "8"], "--checkpoints must be in 1..7"),
    (["--store-K", "-2"], "--store-K must be in 1..1000"),
    (["--threads", "0"], "--threads must be ≥ 1"),
    (["--device", "gpu"], "--device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    (["--name", "a/b"], "--name may hold only letters"),
    (["--max-minutes", "nan"], "--max-minutes must be a finite number > 0"),
    (["--ckpt-every", "0"], "--ckpt-every must be ≥ 1"),
])
def test_the_command_refuses_bad_options_before_any_work(tmp_path, refused, options, names):
    assert names in refused(E.main, [*TINY_ARGS, *options, "--out", str(tmp_path / "out"),
                                     "--ckpt-dir", str(tmp_path / "ck")])
    assert not (tmp_path / "out" / "energy2d_fast.json").exists()


def test_the_command_refuses_another_configurations_result_and_checkpoint(tmp_path, capsys):
    out = tmp_path / "out" / "energy2d_fast.json"
    assert _cli(tmp_path) == 0
    stored = out.read_text()
    capsys.readouterr()
    assert _cli(tmp_path, "--seed", "1") == 2  # another configuration under the same name
    assert capsys.readouterr().err == (f"python -m flowbook.experiments2d: error: {out} holds a result of another "
                                       "configuration; give the run a --name, or pass --overwrite to replace it\n")
    assert out.read_text() == stored
    assert _cli(tmp_path) == 0  # the same configuration again: its own result, replaced
    # a checkpoint of another configuration under this one's name is refused with its path and the fix
    assert _cli(tmp_path, "--seed", "1", "--name", "other") == 0
    other = checkpoint_path(dataclasses.replace(TINY, seed=1), tmp_path / "ck")
    checkpoint_path(TINY, tmp_path / "ck").write_bytes(other.read_bytes())
    capsys.readouterr()
    assert _cli(tmp_path) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {checkpoint_path(TINY, tmp_path / 'ck')} belongs to another configuration (seed: 1 in the " \
           "checkpoint, 0 now)" in err and "--restart" in err
    assert _cli(tmp_path, "--restart") == 0


@pytest.mark.parametrize("path", sorted(RESULTS.glob("energy2d_*.json")), ids=lambda p: p.stem)
def test_a_stored_result_is_its_commands_configuration(path, tmp_path):
    """The command in each stored 2-D result, given to today's command line, makes the same configuration
    (same digest, so the same numbers) and the same result name, and is not refused as an overwrite."""
    from flowbook.experiments2d import cli

    record = json.loads(path.read_text())
    words = shlex.split(record["command"])
    # the options follow "python .../experiments2d.py" (the module's former script) or
    # "python -m flowbook.experiments2d" (the package's entry point)
    start = next(i for i, w in enumerate(words)
                 if w.endswith("experiments2d.py") or w == "flowbook.experiments2d") + 1
    argv = words[start:]
    args = parse_checked(cli._parser(), [*argv, "--out", str(tmp_path), "--ckpt-dir", str(tmp_path)], cli._check)
    cfg = cli._config(args)
    assert runid.config_digest(E.FitConfig.trained_config(record["config"])) == cfg.digest()
    assert args.name == path.stem
    runner.refuse_overwrite(path, cfg, overwrite=False)


def test_checkpoint_names_are_pinned():
    # the configuration of energy2d_full_planar_radial.json: its digest is the stored result's
    cfg = dataclasses.replace(E.FULL, methods=("planar", "radial"), updates=12_000)
    assert checkpoint_path(cfg, "ck") == Path("ck") / "energy2d_planar-radial_K2-8-32_58e6871cd751.pt"


def test_default_methods_are_figure_3s_and_other_registered_types_are_offered():
    """The flow types registered by other modules (Householder, Sylvester, ...) are 2-D methods when named,
    but not in the default run, which stays Figure 3's planar, radial and NICE (chapter 4's live fits)."""
    assert E.FAST.methods == E.FULL.methods == E.METHODS
    assert {E.FAMILY[m] for m in E.METHODS} == {"planar", "radial", "nice"}
    others = {m for m, (flow, _) in flows.variants().items() if flows.SPECS[flow].__module__ != "flowbook.flows"}
    assert {"householder", "sylvester-h", "sylvester-t"} <= others
    assert E.FitConfig(methods=tuple(sorted(others))).methods == tuple(sorted(others))

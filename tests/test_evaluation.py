"""Tests of flowbook.evaluation: the resumable S = 5000 evaluation of stored rows and its command line."""
from __future__ import annotations

import json

import pytest
import torch

from flowbook import evalcli, evaluation, pretrained, results
from flowbook.evaluation import evaluate_resumable, point_bounds
from flowbook.models import DLGM, DLGMConfig
from flowbook.train import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")


def _model() -> DLGM:
    torch.manual_seed(0)
    return DLGM(DLGMConfig(flow="planar", K=2, hidden=16)).eval()


def _data(n: int = 30) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return (torch.rand(n, 784, generator=g) < 0.3).float()


def test_point_bounds_share_their_draws():
    model, x = _model(), _data(12)
    ne, nl = point_bounds(model, x, 1, torch.Generator().manual_seed(0), chunk=1)
    torch.testing.assert_close(ne, nl)  # S = 1: log-mean-exp of one weight is the weight
    ne, nl = point_bounds(model, x, 32, torch.Generator().manual_seed(0), chunk=8)
    assert ne.dtype == torch.float64 and bool((ne >= nl).all())  # KL ≥ 0 point by point


def test_resumed_evaluation_equals_an_uninterrupted_one(tmp_path):
    model, x = _model(), _data(30)
    whole = evaluate_resumable(model, x, 16, tmp_path / "a.pt", batch=10)
    # max_minutes = 0 stops after the first batch, with its progress saved
    assert evaluate_resumable(model, x, 16, tmp_path / "b.pt", batch=10, max_minutes=0) is None
    saved = torch.load(tmp_path / "b.pt", weights_only=True)
    assert saved["neg_log_p"].shape == (10,)
    assert evaluate_resumable(model, x, 16, tmp_path / "b.pt", batch=10, max_minutes=0) is None
    resumed = evaluate_resumable(model, x, 16, tmp_path / "b.pt", batch=10)
    assert resumed is not None and whole is not None
    for k in ("neg_elbo", "neg_log_p", "kl", "neg_log_p_sem", "points", "samples"):
        assert resumed[k] == whole[k], k
    assert resumed["points"] == 30 and resumed["kl"] > 0
    # the same estimator as train.evaluate: the means agree within their standard errors
    ref = evaluate(model, x, samples=16, batch=10)
    assert abs(ref["neg_log_p"] - whole["neg_log_p"]) < 3 * (ref["neg_log_p_sem"] + whole["neg_log_p_sem"])


def test_a_state_of_another_evaluation_or_a_damaged_one_is_refused(tmp_path):
    model, x = _model(), _data(20)
    state = tmp_path / "s.pt"
    assert evaluate_resumable(model, x, 8, state, batch=10, max_minutes=0) is None
    with pytest.raises(ValueError, match="another evaluation"):
        evaluate_resumable(model, x, 16, state, batch=10)  # other S
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with pytest.raises(ValueError, match="another evaluation"):
        evaluate_resumable(model, x, 8, state, batch=10)  # other weights
    state.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=str(state)):
        evaluate_resumable(model, x, 8, state, batch=10)


def test_add_evaluation_keeps_the_record_and_only_appends(tmp_path):
    path = results.save_result("r", config={"a": 1}, metrics={"neg_log_p": 90.0}, wall_time_s=1.0, device="cpu",
                               command="python -m x", directory=tmp_path)
    assert results.add_evaluation(path, {"samples": 5000, "points": 10, "seed": 1, "neg_log_p": 89.0}, device="cpu",
                                  command="c1")
    assert results.add_evaluation(path, {"samples": 1000, "points": 10, "seed": 1, "neg_log_p": float("nan")},
                                  device="cpu", command="c2")
    before = path.read_bytes()
    # the same samples, points and seed again: nothing changes (an evaluation is never replaced)
    assert not results.add_evaluation(path, {"samples": 5000, "points": 10, "seed": 1, "neg_log_p": 1.0},
                                      device="cpu", command="c3")
    assert path.read_bytes() == before
    record = json.loads(path.read_text())  # strict JSON: NaN became null
    assert record["metrics"] == {"neg_log_p": 90.0} and record["command"] == "python -m x"
    assert [(e["samples"], e["command"], e["neg_log_p"]) for e in record["evaluations"]] == [
        (5000, "c1", 89.0), (1000, "c2", None)]
    assert {"commit", "device", "date", "torch"} <= set(record["evaluations"][1])


def test_evaluation_picks_the_whole_test_set_with_the_most_samples():
    record = {"name": "r", "metrics": {"samples": 1000, "points": 100, "neg_log_p": 90.0},
              "evaluations": [{"samples": 5000, "points": 100, "neg_log_p": 89.8},
                              {"samples": 20000, "points": 10, "neg_log_p": 89.0}]}  # a subset: never chosen
    assert results.evaluation(record)["neg_log_p"] == 89.8
    assert results.evaluation(record, 1000)["neg_log_p"] == 90.0
    assert results.evaluation({"metrics": record["metrics"]})["samples"] == 1000  # no later evaluation
    with pytest.raises(KeyError, match=r"S = 20000 on its 100 test points \(it has S = \[1000, 5000\]\)"):
        results.evaluation(record, 20000)


@pytest.fixture
def stored_row(tmp_path, monkeypatch):
    """A tiny 'stored row' (weights and result) in temporary weights and results directories."""
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path / "weights")
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path / "results")
    pretrained.save(_model(), "mnist_stored_planar_K2", tmp_path / "weights")
    results.save_result("mnist_stored_planar_K2", config={}, metrics={}, wall_time_s=0.0, device="cpu",
                        directory=tmp_path / "results")
    return tmp_path


def test_command_line_adds_the_evaluation_to_the_stored_result(stored_row, capsys):
    argv = ["mnist_stored_planar_K2", "--samples", "4", "--points", "20", "--state-dir", str(stored_row / "ck")]
    assert evalcli.main(argv) == 0
    record = json.loads((stored_row / "results" / "mnist_stored_planar_K2.json").read_text())
    (entry,) = record["evaluations"]
    assert entry["samples"] == 4 and entry["points"] == 20 and entry["weights"].endswith("mnist_stored_planar_K2.pt")
    assert entry["command"].startswith("python -m flowbook evaluate-weights mnist_stored_planar_K2")
    assert not list((stored_row / "ck").glob("*.pt"))  # the progress file goes once the result is written
    assert "added to" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["mnist_stored_planar_K2", "--samples", "0"], "--samples must be ≥ 1"),
    (["mnist_stored_planar_K2", "--points", "10001"], "--points must be in 1..10000"),
    (["mnist_stored_planar_K2", "--max-minutes", "0"], "--max-minutes must be a finite number > 0"),
    (["cifar10_stored_planar_K10"], "stored MNIST row"),
    (["mnist_stored_planar_K7"], "no file"),
])
def test_command_line_refuses_bad_input_in_one_line(stored_row, capsys, argv, message):
    assert evalcli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("edit", ["2-D values", "float32 values", "lengths differ", "more than the points",
                                  "NaN value", "seconds a string"])
def test_a_hand_edited_state_is_refused_before_any_point_is_evaluated(tmp_path, monkeypatch, edit):
    """Issue 26, bug 17: an edited state is refused at the start, not after the whole evaluation."""
    model, x = _model(), _data(20)
    state = tmp_path / "s.pt"
    assert evaluate_resumable(model, x, 8, state, batch=10, max_minutes=0) is None
    saved = torch.load(state, weights_only=True)
    done = saved["neg_log_p"]
    saved.update({"2-D values": {"neg_elbo": done[:, None], "neg_log_p": done[:, None]},
                  "float32 values": {"neg_elbo": done.float()},
                  "lengths differ": {"neg_elbo": done[:5]},
                  "more than the points": {"neg_elbo": done.repeat(3), "neg_log_p": done.repeat(3)},
                  "NaN value": {"neg_log_p": torch.full_like(done, float("nan"))},
                  "seconds a string": {"seconds": "1.5"}}[edit])
    torch.save(saved, state)
    evaluated = []
    monkeypatch.setattr(evaluation, "point_bounds", lambda *a: evaluated.append(a) or point_bounds(*a))
    with pytest.raises(ValueError, match=f"{state} is not a valid evaluation state"):
        evaluate_resumable(model, x, 8, state, batch=10)
    assert not evaluated


def test_command_line_is_done_when_the_result_holds_the_evaluation(stored_row, capsys):
    """An evaluation already added is not run again (evaluations are only appended)."""
    argv = ["mnist_stored_planar_K2", "--samples", "4", "--points", "20", "--state-dir", str(stored_row / "ck")]
    assert evalcli.main(argv) == 0
    path = stored_row / "results" / "mnist_stored_planar_K2.json"
    before = path.read_bytes()
    capsys.readouterr()
    assert evalcli.main(argv) == 0
    assert capsys.readouterr().out.startswith(f"done: {path} already holds this evaluation")
    assert path.read_bytes() == before


def test_command_line_names_a_bad_seed(stored_row, capsys):
    """Issue 26, bug 17: a seed that is not a 32-bit integer names --seed (10**23 failed in torch)."""
    argv = ["mnist_stored_planar_K2", "--state-dir", str(stored_row / "ck"), "--seed"]
    with pytest.raises(SystemExit) as exit_info:
        evalcli.main([*argv, "1e23"])  # not an integer: argparse's usage error
    assert exit_info.value.code == 2 and "argument --seed: invalid int value: '1e23'" in capsys.readouterr().err
    assert evalcli.main([*argv, str(10**23)]) == 2
    assert "--seed must be in 0..4294967295, got 100000000000000000000000" in capsys.readouterr().err


def test_command_line_refuses_a_state_dir_it_cannot_write_before_evaluating(stored_row, capsys, monkeypatch):
    """Issue 26, bug 12: an unwritable --state-dir (here below a file) is refused at the start, not
    after the whole evaluation."""
    (stored_row / "a-file").write_text("")
    evaluated = []
    monkeypatch.setattr(evaluation, "point_bounds", lambda *a: evaluated.append(a) or point_bounds(*a))
    argv = ["mnist_stored_planar_K2", "--samples", "4", "--points", "20",
            "--state-dir", str(stored_row / "a-file" / "s")]
    assert evalcli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--state-dir" in err and str(stored_row / "a-file" / "s") in err and len(err.strip().splitlines()) == 1
    assert not evaluated


def test_command_line_ends_with_one_line_and_status_1_on_a_damaged_dataset(stored_row, capsys, monkeypatch):
    """Issue 26, bug 6: a damaged mnist.npz in the data root."""
    root = stored_row / "root"
    root.mkdir()
    (root / "mnist.npz").write_bytes(b"PK\x03\x04" + bytes(100))
    monkeypatch.setenv("FLOWBOOK_DATA", str(root))
    argv = ["mnist_stored_planar_K2", "--samples", "4", "--points", "20", "--state-dir", str(stored_row / "ck")]
    assert evalcli.main(argv) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("python -m flowbook evaluate-weights: error: ") and str(root / "mnist.npz") in line


def test_per_point_values_are_saved_read_back_and_paired(tmp_path):
    from flowbook.evaluation import load_point_values, paired_difference, save_point_values
    from flowbook.train import evaluate

    model, x = _model(), _data(30)
    m = evaluate(model, x, samples=8, batch=10, per_point=True)
    pp = m["per_point"]
    assert pp["neg_log_p"].shape == (30,) and m["neg_log_p"] == pytest.approx(pp["neg_log_p"].mean().item())
    name = save_point_values(tmp_path, "row", 8, 1234, **pp)
    back = load_point_values(tmp_path / name)
    assert back["samples"] == 8 and back["points"] == 30
    torch.testing.assert_close(back["neg_log_p"], pp["neg_log_p"], atol=5e-5, rtol=0)
    a = torch.tensor([1.0, 2.0, 4.0])
    mean, sem = paired_difference(a, a - torch.tensor([0.5, 1.0, 1.5]))
    assert mean == pytest.approx(1.0) and sem == pytest.approx(0.5 / 3 ** 0.5)
    with pytest.raises(ValueError, match="one length"):
        paired_difference(a, a[:2])
    (tmp_path / "bad.json").write_text('{"format": "x"}')
    with pytest.raises(ValueError, match="per-point"):
        load_point_values(tmp_path / "bad.json")


def test_stored_per_point_values_agree_with_their_evaluation_entry():
    from flowbook import results
    from flowbook.evaluation import stored_point_values

    name = "mnist_stored_updates120k_planar_K80"
    entry = next(e for e in results.load_result(results.RESULTS_DIR / f"{name}.json")["evaluations"]
                 if e.get("points_file"))
    values = stored_point_values(name, entry["samples"], entry["points"], entry["seed"])
    assert values["points"] == entry["points"] == len(values["neg_log_p"])
    assert values["neg_log_p"].mean().item() == pytest.approx(entry["neg_log_p"], abs=1e-4)
    assert (values["neg_elbo"] - values["neg_log_p"]).mean().item() == pytest.approx(entry["kl"], abs=1e-4)

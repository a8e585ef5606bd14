"""Tests of flowbook.pretrained: float16 weights round-trip, damaged files are named, and the committed
weights of the stored runs reproduce their stored results."""
from __future__ import annotations

import math

import pytest
import torch

from flowbook import data, pretrained
from flowbook.models import DLGM, DLGMConfig
from flowbook.train import evaluate


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("flow, K", [("planar", 0), ("planar", 3), ("nice", 2), ("radial", 2)])
def test_save_then_load_gives_the_rounded_model(tmp_path, flow, K):
    model = DLGM(DLGMConfig(flow=flow, K=K, hidden=16))
    pretrained.round_like_saved(model)
    path = pretrained.save(model, "m", tmp_path)
    loaded = pretrained.load_file(path)
    assert loaded.config == model.config
    for (name, p), (_, q) in zip(model.named_parameters(), loaded.named_parameters()):
        assert torch.equal(p, q), name
    for (name, b), (_, c) in zip(model.named_buffers(), loaded.named_buffers()):
        assert torch.equal(b, c), name  # NICE's mixings are rebuilt from the seed, exactly
    assert all(t.dtype == torch.float16 for t in torch.load(path, weights_only=True)["state"].values())


def test_rounding_changes_the_loss_by_little():
    model = DLGM(DLGMConfig(flow="planar", K=4, hidden=16)).double()
    x = (torch.rand(20, 784, generator=torch.Generator().manual_seed(0)) < 0.3).double()
    eps = torch.randn(20, 40, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    before = model.loss(x, eps).item()
    after = pretrained.round_like_saved(model).loss(x, eps).item()
    assert before != after and abs(before - after) < 1e-2 * abs(before)


def test_missing_and_damaged_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no weights file"):
        pretrained.load("planar", 7, directory=tmp_path)
    bad = tmp_path / "mnist_stored_planar_K7.pt"
    for content in (b"", b"not a torch file", b"PK\x03\x04 truncated zip"):
        bad.write_bytes(content)
        with pytest.raises(ValueError, match="mnist_stored_planar_K7.pt"):
            pretrained.load("planar", 7, directory=tmp_path)
    torch.save({"something": 1}, bad)
    with pytest.raises(ValueError, match="not a flowbook weights file"):
        pretrained.load("planar", 7, directory=tmp_path)


def test_names():
    assert pretrained.weights_name("mnist", "planar", 80) == "mnist_stored_planar_K80"
    assert pretrained.weights_name("mnist", "nice", 0) == "mnist_stored_diagonal"
    assert pretrained.weights_name("cifar10", "planar", 5) == "cifar10_stored_K5"
    assert pretrained.weights_name("mnist", "planar", 80, label="updates120k") == "mnist_stored_updates120k_planar_K80"


def test_stored_results_keep_variants_apart():
    """The unlabelled rows and a variant's rows (label updates120k) never mix: each call returns only
    records of its own label, and only rows that finished their 120 000 updates."""
    assert all(not r["config"]["train"].get("label") for r in pretrained.stored_results("mnist").values())
    longer = pretrained.stored_results("mnist", label="updates120k")
    assert longer, "no stored updates120k rows"
    for record in longer.values():
        assert record["config"]["train"]["label"] == "updates120k"
        assert record["config"]["updates_done"] == record["config"]["train"]["updates"] == 120_000
    assert pretrained.stored_results("mnist", label="no-such-label") == {}


MNIST_ROWS = [(label, row) for label in (None, "updates120k")
              for row in sorted(pretrained.stored_results("mnist", label=label))]


@pytest.mark.parametrize("label,row", MNIST_ROWS, ids=[f"{lab or ''}{f}{k}" for lab, (f, k) in MNIST_ROWS])
def test_committed_mnist_weights_reproduce_their_stored_bound(label, row):
    """The committed weights of each stored Table 2 row (and of each row of the 120 000-update variant),
    evaluated on the first 300 test digits, give a −ELBO within 3 standard errors of the stored
    whole-test-set value (and the same binarization)."""
    record = pretrained.stored_results("mnist", label=label)[row]
    assert record["config"]["binarization"] == data.binarized_mnist_source()
    model = pretrained.load(*row, label=label)
    assert model.config.to_dict() == record["config"]["model"]
    m = evaluate(model, data.binarized_mnist("test")[:300], samples=20, progress=False)
    stored = record["metrics"]
    assert math.isfinite(m["neg_elbo"])
    assert abs(m["neg_elbo"] - stored["neg_elbo"]) < 3 * m["neg_elbo_sem"], (m, stored["neg_elbo"])
    assert m["neg_log_p"] <= m["neg_elbo"] + 1e-6


def test_every_committed_weights_file_is_small_and_has_its_result():
    """Each file in data/weights/ is at most 3 MB and is named like a stored result, whose provenance
    points back at it."""
    from flowbook.results import RESULTS_DIR, load_result

    for path in sorted(pretrained.WEIGHTS_DIR.glob("*.pt")):
        assert path.stat().st_size <= 3 * 2**20, path
        record = load_result(RESULTS_DIR / f"{path.stem}.json")
        assert record["config"]["weights"] == f"data/weights/{path.name}"


@pytest.mark.parametrize("path", sorted(pretrained.WEIGHTS_DIR.glob("*.pt")), ids=lambda p: p.stem)
def test_every_committed_weights_file_builds_its_model(path):
    """Each committed weights file loads into a DLGM of its stored config with exactly the parameter names
    of a freshly built one (the names the flow specs give: flow_head, nice_w1, nice_w2, nice_mixing), and
    its free energy on two inputs is finite."""
    model = pretrained.load_file(path)
    fresh = DLGM(model.config)
    assert list(model.state_dict()) == list(fresh.state_dict())
    c = model.config
    expected = {"flow_head.weight", "flow_head.bias"} if c.K else set()
    if c.K and c.flow == "nice":
        expected |= {"nice_w1", "nice_w2", "nice_mixing"}
    assert {k for k in model.state_dict() if not k.startswith(("enc", "dec", "q0_head", "log_sigma_x"))} == expected
    x = torch.rand(2, c.data_dim, generator=torch.Generator().manual_seed(0)) * 0.98 + 0.01
    if c.likelihood == "bernoulli":
        x = (x > 0.5).float()
    with torch.no_grad():
        assert torch.isfinite(model.loss(x, torch.zeros(2, c.latent))).all()


CIFAR_ROWS = sorted(pretrained.stored_results("cifar10"))


@pytest.mark.parametrize("row", CIFAR_ROWS, ids=[f"K{k}" for _, k in CIFAR_ROWS])
def test_committed_cifar_weights_reproduce_their_stored_bound(row):
    """The same check for the stored Table 3 rows, on the first 300 of the fixed test patches, in nats
    per patch of v (the bound of p_Y plus the squeeze's Jacobian)."""
    from flowbook import cifar

    record = pretrained.stored_results("cifar10")[row]
    model = pretrained.load(*row, "cifar10")
    assert model.config.to_dict() == record["config"]["model"]
    y = cifar.test_data(cifar.STORED)[:300]
    m = evaluate(model, y, samples=20, progress=False)
    bound = m["neg_elbo"] - data.unit_interval_log_jacobian(cifar.PATCH_DIM, cifar.EPS)
    stored = record["metrics"]["neg_elbo"]
    assert abs(bound - stored) < 3 * m["neg_elbo_sem"], (bound, stored)


def test_every_table_row_is_stored():
    """Table 3's four rows and the paper's nine rows of Table 2 are all stored, with weights, for Table 2's
    protocol (120 000 updates) and for the first one (60 000), which chapter 5 compares with it."""
    assert {K for _, K in pretrained.stored_results("cifar10")} == {0, 2, 5, 10}
    table2 = {("diagonal", 0)} | {(f, K) for f in ("planar", "nice") for K in (10, 20, 40, 80)}
    for label in (None, "updates120k"):
        rows = pretrained.stored_results("mnist", label=label)
        assert table2 <= set(rows), label
        assert all((pretrained.WEIGHTS_DIR / f"{r['name']}.pt").is_file() for r in rows.values())

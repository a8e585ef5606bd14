"""Tests of flowbook.pretrained: float16 weights round-trip, damaged files are named, and the committed
weights of the stored runs reproduce their stored results."""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from flowbook import data, pretrained, store
from flowbook.models import DLGM, DLGMConfig
from flowbook.results import load_result
from flowbook.runid import run_name
from flowbook.store import StoreError
from flowbook.train import evaluate


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("flow, K", [("planar", 0), ("planar", 3), ("nice", 2), ("radial", 2)])
def test_save_then_load_gives_the_rounded_model(tmp_path, flow, K):
    model = DLGM(DLGMConfig(flow=flow, K=K, hidden=16))
    pretrained.round_like_saved(model)
    path = pretrained.save(model, run_name("mnist", flow, K), tmp_path)
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
    bad.write_bytes(b"junk")
    with pytest.raises(ValueError) as info:
        pretrained.load_file(bad)
    assert "{path}" not in str(info.value) and str(bad) in str(info.value)  # bug 17: the path, not a placeholder


def test_names():
    assert run_name("mnist", "planar", 80) == "mnist_stored_planar_K80"
    assert run_name("mnist", "nice", 0) == "mnist_stored_diagonal"
    assert run_name("cifar10", "planar", 5) == "cifar10_stored_planar_K5"
    assert run_name("cifar10", "radial", 0) == "cifar10_stored_diagonal"
    assert run_name("mnist", "planar", 80, label="updates120k") == "mnist_stored_updates120k_planar_K80"


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


#: Every committed weights file (the manifest's), each with its result beside it.
WEIGHTS = [rel for rel in store.listed("data/weights/") if rel.endswith(".pt")]


def _stored(rel: str) -> tuple[dict, dict]:
    """The result record of the committed weights file ``rel`` and the row its content says it is."""
    path = store.path(f"data/results/{Path(rel).stem}.json")
    record = load_result(path)
    return record, pretrained.check_result(record, path)


@pytest.mark.parametrize("rel", WEIGHTS, ids=lambda rel: Path(rel).stem)
def test_every_committed_weights_file_is_its_row_and_reproduces_its_stored_bound(rel):
    """Each committed weights file loads, through :func:`pretrained.load` and all its checks, as the row its
    name says; evaluated on the first 300 test points (MNIST digits, or CIFAR-10 patches in nats per patch
    of v: the bound of p_Y plus the squeeze's Jacobian) it gives a −ELBO within 3 standard errors of the
    stored whole-test-set value."""
    from flowbook import cifar

    record, row = _stored(rel)
    assert row["name"] == Path(rel).stem and row["updates_done"] == row["updates"]
    model = pretrained.load(row["flow"], row["K"], row["dataset"], row["protocol"], label=row["label"])
    assert model.config.to_dict() == record["config"]["model"]
    if row["dataset"] == "mnist":
        assert record["config"]["binarization"] == data.binarized_mnist_source()
        x, offset = data.binarized_mnist("test")[:300], 0.0
    else:
        x, offset = cifar.test_data(cifar.STORED)[:300], -data.unit_interval_log_jacobian(cifar.PATCH_DIM, cifar.EPS)
    m = evaluate(model, x, samples=20, progress=False)
    stored = record["metrics"]["neg_elbo"]
    assert math.isfinite(m["neg_elbo"]) and m["neg_log_p"] <= m["neg_elbo"] + 1e-6
    assert abs(m["neg_elbo"] + offset - stored) < 3 * m["neg_elbo_sem"], (m, stored)


def test_every_committed_weights_file_is_small_and_has_its_result():
    """Each file in data/weights/ is at most 3 MB and is named like a stored result, whose provenance
    points back at it."""
    for rel in WEIGHTS:
        assert store.manifest()[rel]["size"] <= 3 * 2**20, rel
        record, _ = _stored(rel)
        assert record["config"]["weights"] == rel


@pytest.mark.parametrize("rel", WEIGHTS, ids=lambda rel: Path(rel).stem)
def test_every_committed_weights_file_builds_its_model(rel):
    """Each committed weights file loads into a DLGM of its stored config with exactly the parameter names
    of a freshly built one (the names the flow specs give: flow_head, and each global parameter or buffer as
    <flow>_<name>, e.g. nice_w1, nice_w2, nice_mixing or iaf_w1), and its free energy on two inputs is
    finite."""
    model = pretrained.load_file(store.path(rel))
    fresh = DLGM(model.config)
    assert list(model.state_dict()) == list(fresh.state_dict())
    c = model.config
    expected = {"flow_head.weight", "flow_head.bias"} if c.K else set()
    if c.K:
        spec = c.flow_spec()
        expected |= {f"{spec.name}_{n}" for n in spec.names if n not in spec.amortized}
    if c.K and c.flow == "nice":
        assert {"nice_w1", "nice_w2", "nice_mixing"} <= expected
    assert {k for k in model.state_dict() if not k.startswith(("enc", "dec", "q0_head", "log_sigma_x"))} == expected
    x = torch.rand(2, c.data_dim, generator=torch.Generator().manual_seed(0)) * 0.98 + 0.01
    if c.likelihood == "bernoulli":
        x = (x > 0.5).float()
    with torch.no_grad():
        assert torch.isfinite(model.loss(x, torch.zeros(2, c.latent))).all()


def test_every_table_row_is_stored_and_only_its_latest_stage_keeps_weights():
    """Table 3's four rows and the paper's nine rows of Table 2 are all stored, for Table 2's protocol
    (120 000 updates) and for the first one (60 000), which chapter 5 compares with it; of each Table 2
    row's stages only the latest keeps its weights in the tree (issue 27, item 6)."""
    assert {K for _, K in pretrained.stored_results("cifar10")} == {0, 2, 5, 10}
    table2 = {("diagonal", 0)} | {(f, K) for f in ("planar", "nice") for K in (10, 20, 40, 80)}
    labels = (None, "updates120k", "updates240k", "updates360k", "updates480k")  # NICE K = 80: 360k too
    stages = {label: pretrained.stored_results("mnist", label=label) for label in labels}
    assert table2 <= set(stages[None]) and table2 <= set(stages["updates120k"])
    for row in table2:
        have = [label for label in labels if row in stages[label]]
        latest = pretrained.latest_stage(*row)
        assert latest == have[-1], (row, have)
        for label in have:
            weights = f"data/weights/{stages[label][row]['name']}.pt"
            assert (weights in store.manifest()) == (label == latest), (row, label)


def test_latest_stage_says_which_row_has_no_weights():
    with pytest.raises(FileNotFoundError, match="planar_K7"):
        pretrained.latest_stage("planar", 7)


# --- the read side of issue 26: a file is accepted only if it is what was asked for ---------------------------
#: the planar K = 80 row's latest stage: of a row's stages only the latest keeps its weights in the tree
STAGE80 = pretrained.latest_stage("planar", 80)
K80 = run_name("mnist", "planar", 80, label=STAGE80)


@pytest.fixture
def clone(tmp_path, monkeypatch):
    """A copy of the clone's stored files, taken as the clone (with the shipped manifest), to damage."""
    root = tmp_path / "clone"
    (root / ".git").mkdir(parents=True)
    shutil.copytree(store.REPO_ROOT / "data" / "results", root / "data" / "results")
    shutil.copytree(store.REPO_ROOT / "data" / "weights", root / "data" / "weights")
    monkeypatch.setattr(store, "REPO_ROOT", root)
    monkeypatch.setattr(pretrained, "REPO_ROOT", root)
    return root


@pytest.mark.parametrize("source", [run_name("mnist", f, K, label=pretrained.latest_stage(f, K))
                                    for f, K in (("planar", 10), ("nice", 80))] + ["cifar10_stored_planar_K10"])
def test_another_rows_weights_under_a_rows_name_are_refused(clone, tmp_path, source):
    """Bug 2: another row's weights copied under the K = 80 row's name (K = 10, a NICE file, the CIFAR-10
    K = 10 file) are refused by load and by stored_results, in the clone (the manifest's SHA-256) and in
    a folder without a manifest (the file's own config)."""
    weights = clone / "data" / "weights"
    shutil.copy(weights / f"{source}.pt", weights / f"{K80}.pt")
    with pytest.raises(StoreError, match=rf"{K80}.pt is not the stored data/weights/{K80}.pt.*git checkout --"):
        pretrained.load("planar", 80, label=STAGE80)
    with pytest.raises(StoreError, match=rf"{K80}.pt is not the stored"):
        pretrained.stored_results("mnist", label=STAGE80)
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(weights / f"{K80}.pt", plain)
    with pytest.raises(StoreError, match=rf"{K80}.pt: its config is a \w+ model with flow \w+, K = (10|80) "
                                         rf"\(a file named \w+_..._(planar_K10|nice_K80|K10).pt\), not {K80}"):
        pretrained.load("planar", 80, label=STAGE80, directory=plain)


def test_a_stray_or_misnamed_result_cannot_change_or_drop_a_row(clone):
    """Bug 8: a stray ``..._old.json`` with −ln p 1.0 is ignored (not in the manifest) in the clone and
    refused in a plain folder; a K = 10 record under the K = 80 name is refused, naming both."""
    results_dir = clone / "data" / "results"
    before = pretrained.stored_results("mnist", label=STAGE80)
    record = json.loads((results_dir / f"{K80}.json").read_text())
    record["metrics"]["neg_log_p"] = 1.0
    (results_dir / f"{K80}_old.json").write_text(json.dumps(record))
    after = pretrained.stored_results("mnist", label=STAGE80)
    assert after.keys() == before.keys() and after[("planar", 80)]["metrics"]["neg_log_p"] > 80
    with pytest.raises(StoreError, match=rf"{K80}_old.json: its content is the run {K80} .*, not {K80}_old"):
        pretrained.stored_results("mnist", directory=results_dir, label=STAGE80)
    (results_dir / f"{K80}_old.json").unlink()
    shutil.copy(results_dir / "mnist_stored_updates120k_planar_K10.json", results_dir / f"{K80}.json")
    with pytest.raises(StoreError, match=rf"{K80}.json is not the stored data/results/{K80}.json"):
        pretrained.stored_results("mnist", label=STAGE80)
    with pytest.raises(StoreError, match=rf"{K80}.json: its content is the run mnist_stored_updates120k_planar_K10"):
        pretrained.stored_results("mnist", directory=results_dir, label=STAGE80)


def _row_files(tmp_path, name: str = "mnist_stored_planar_K2") -> tuple[Path, dict]:
    """A small row saved in tmp_path (weights) and its well-formed result record."""
    model = DLGM(DLGMConfig(flow="planar", K=2, hidden=16))
    pretrained.save(model, name, tmp_path)
    record = {"name": name, "command": "c", "commit": "x", "device": "cpu", "date": "d", "wall_time_s": 1.0,
              "config": {"model": model.config.to_dict(), "train": {"mode": "stored", "label": "", "updates": 5},
                         "updates_done": 5},
              "metrics": {"neg_elbo": 100.0, "neg_log_p": 98.0, "points": 10, "samples": 2}}
    return tmp_path / f"{name}.pt", record


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(config=None), r"'config' must be an object with objects 'train' and 'model' \(found null\)"),
    (lambda r: r["config"].pop("train"), r"'config' must be an object .*found keys \['model', 'updates_done'\]"),
    (lambda r: r.update(metrics=None), r"metrics is NoneType, not an object with neg_elbo"),
    (lambda r: r["metrics"].update(neg_log_p=None), r"metrics\['neg_log_p'\] is None, not a finite number"),
    (lambda r: r["metrics"].update(neg_log_p=float("nan")), r"metrics\['neg_log_p'\] is nan, not a finite"),
    (lambda r: r["metrics"].update(neg_elbo="90"), r"metrics\['neg_elbo'\] is '90', not a finite number"),
    (lambda r: r.update(evaluations=[{"samples": 5000, "points": 10, "neg_log_p": None}]),
     r"evaluations\[0\]\['neg_elbo'\] is None"),
    (lambda r: r["config"]["model"].update(K="2"), r"the record does not say which row it is \(K '2'"),
    (lambda r: r["config"]["model"].update(K=10), r"its content is the run mnist_stored_planar_K10"),
], ids=["config-null", "no-train", "metrics-null", "nlp-null", "nlp-nan", "string", "evaluation-null", "K-string",
        "other-row"])
def test_a_malformed_result_is_refused_clearly(tmp_path, change, message):
    """Bugs 9 and 10 (results): a parseable but malformed record gives one StoreError naming the file,
    never a TypeError, KeyError or AttributeError, and no None, NaN or string reaches a table."""
    _, record = _row_files(tmp_path)
    change(record)
    (tmp_path / "mnist_stored_planar_K2.json").write_text(json.dumps(record))
    with pytest.raises(StoreError, match=rf"mnist_stored_planar_K2.json: .*{message}"):
        pretrained.stored_results("mnist", directory=tmp_path)


def _rewrite(path: Path, change) -> None:
    saved = torch.load(path, weights_only=True)
    change(saved)
    torch.save(saved, path)


@pytest.mark.parametrize("change, message", [
    (lambda w: w.pop("config"), r"'config' is NoneType, not the model's config"),
    (lambda w: w["config"].update(hidden="many"), r"is not a valid model config"),
    (lambda w: w["state"].update({"q0_head.bias": torch.zeros(3)}), r"q0_head.bias is torch.float32 \(3,\), expected floating point \(80,\)"),
    (lambda w: w["state"].update({"q0_head.bias": w["state"]["q0_head.bias"].to(torch.int8)}),
     r"q0_head.bias is torch.int8 \(80,\), expected floating point"),
    (lambda w: w["state"]["q0_head.bias"].fill_(float("nan")), r"q0_head.bias holds 80 non-finite values"),
    (lambda w: w["state"].pop("q0_head.bias"), r"its parameters do not match its config \(differing: \['q0_head.bias'\]"),
    (lambda w: w["config"].update(K=3), r"flow planar, K = 3 .*not mnist_stored_planar_K2"),
], ids=["no-config", "bad-config", "wrong-shape", "int8", "nan", "missing-tensor", "other-row"])
def test_a_malformed_weights_file_is_refused_clearly(tmp_path, change, message):
    """Bugs 9 and 10 (weights): no config, a wrong-shape, int8 or NaN tensor, or another row's config give
    one StoreError naming the file, never a KeyError or a size-mismatch RuntimeError."""
    path, _ = _row_files(tmp_path)
    _rewrite(path, change)
    with pytest.raises(StoreError, match=rf"mnist_stored_planar_K2.pt: .*{message}"):
        pretrained.load("planar", 2, directory=tmp_path)


def test_weights_must_be_their_results_model(tmp_path):
    path, record = _row_files(tmp_path)
    other = {**record["config"]["model"], "seed": 1}
    with pytest.raises(StoreError, match=r"its config differs from its result's config.model in seed \(0 here, 1"):
        pretrained.load_file(path, expected_config=other)


def test_saves_are_byte_identical_and_leave_no_temporary(tmp_path, monkeypatch):
    """Bug 16: two saves of the same model give the same bytes (no temporary name inside the archive); a
    failed save leaves no temporary, and a killed writer's temporary is removed by the next save."""
    a = pretrained.save(DLGM(DLGMConfig(flow="nice", K=2, hidden=16)), "mnist_stored_nice_K2", tmp_path / "a")
    b = pretrained.save(DLGM(DLGMConfig(flow="nice", K=2, hidden=16)), "mnist_stored_nice_K2", tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()
    assert all(n.startswith("archive/") for n in zipfile.ZipFile(io.BytesIO(a.read_bytes())).namelist())
    stale = tmp_path / "a" / ".mnist_stored_nice_K2.pt.999999999.tmp"  # no process has this pid
    stale.write_bytes(b"half")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(pretrained.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        pretrained.save(DLGM(DLGMConfig(flow="nice", K=2, hidden=16)), "mnist_stored_nice_K2", tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["mnist_stored_nice_K2.pt"]


def test_a_float64_model_takes_float32_data(tmp_path):
    """Bug 17: a model loaded as float64 evaluates float32 data (cast to its type) instead of failing."""
    path, _ = _row_files(tmp_path)
    m64 = pretrained.load_file(path, dtype=torch.float64)
    m32 = pretrained.load_file(path)
    x = (torch.rand(4, 784, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    eps = torch.zeros(4, 40)
    assert m64.loss(x, eps).dtype == torch.float64
    torch.testing.assert_close(m64.loss(x, eps).float(), m32.loss(x, eps), rtol=1e-4, atol=1e-3)
    _, zK, _ = m64.posterior_samples(x, 2)
    assert zK.dtype == torch.float64


def test_load_outside_any_clone_downloads_the_verified_row(tmp_path, store_server):
    """In a fresh process that imports flowbook from a folder outside any clone (as a wheel in Colab), from
    an empty working folder, with an empty cache and the store pointed at a local server of this clone,
    :func:`pretrained.load` returns the stored K = 80 row, equal to the clone's own."""
    site = tmp_path / "site"
    shutil.copytree(Path(pretrained.__file__).parent, site / "flowbook",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "content").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "FLOWBOOK_STORE_LOCAL"}
    env.update(PYTHONPATH=str(site), FLOWBOOK_STORE_URL=store_server(store.REPO_ROOT),
               FLOWBOOK_CACHE=str(tmp_path / "cache"))
    script = ("import json, flowbook; from flowbook import pretrained, store\n"
              f"m = pretrained.load('planar', 80, label={STAGE80!r})\n"
              f"rows = pretrained.stored_results('mnist', label={STAGE80!r})\n"
              "print(json.dumps({'file': flowbook.__file__, 'clone': store.in_clone(), 'config': m.config.to_dict(),"
              " 'sum': sum(float(p.detach().double().sum()) for p in m.parameters()), 'rows': len(rows)}))")
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path / "content", env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    local = pretrained.load("planar", 80, label=STAGE80)
    assert got["file"].startswith(str(site)) and not got["clone"]
    assert got["config"] == local.config.to_dict()
    assert got["rows"] == len(pretrained.stored_results("mnist", label=STAGE80))
    assert got["sum"] == sum(float(p.detach().double().sum()) for p in local.parameters())
    assert (tmp_path / "cache" / "store").is_dir() and not (tmp_path / "content" / "data").exists()

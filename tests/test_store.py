"""Tests of flowbook.store: the manifest matches the committed data, downloads are checked and cached,
changed files are refused with a way to restore them, and the command line reports all of it."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import pytest

from flowbook import pretrained, results, store, storecli
from flowbook.runid import run_name

BENCH = "data/results/bench_dlgm.json"
#: A minimal result record, for a repository made in a test.
RECORD = {"name": "bench_dlgm", "command": "c", "commit": "x", "device": "cpu", "date": "d", "wall_time_s": 1.0,
          "config": {}, "metrics": {}}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def outside_clone(tmp_path, monkeypatch):
    """The store as outside any clone (FLOWBOOK_STORE_LOCAL=0), with an empty cache in tmp_path; returns a
    function that points the store at a server."""
    monkeypatch.setenv("FLOWBOOK_STORE_LOCAL", "0")
    monkeypatch.setenv("FLOWBOOK_CACHE", str(tmp_path / "cache"))
    return lambda url: monkeypatch.setenv("FLOWBOOK_STORE_URL", url)


@pytest.fixture
def git_clone(tmp_path, monkeypatch):
    """A small git repository with one committed result, taken as the package's clone (REPO_ROOT) with its
    own manifest."""
    root = tmp_path / "clone"
    (root / "data" / "results").mkdir(parents=True)
    (root / "data" / "weights").mkdir()
    (root / BENCH).write_text(json.dumps(RECORD))
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for args in (["init", "-q"], ["add", "data"], ["commit", "-q", "-m", "data"]):
        subprocess.run(["git", "-C", str(root), *args], check=True, env=env)
    monkeypatch.setattr(store, "REPO_ROOT", root)
    monkeypatch.setattr(store, "MANIFEST", tmp_path / "manifest.json")
    store.manifest.cache_clear()
    yield root
    store.manifest.cache_clear()


def test_the_manifest_lists_every_tracked_data_file_with_its_size_and_sha256():
    """Every tracked file of data/results and data/weights, and nothing else, with the working tree's size
    and SHA-256; and each listed commit holds exactly these bytes (so a download at it gets them)."""
    if not (store.REPO_ROOT / ".git").exists():
        pytest.skip("not a clone")
    tracked = subprocess.run(["git", "-C", str(store.REPO_ROOT), "ls-files", "--", *store.STORED_DIRS],
                             capture_output=True, text=True, check=True).stdout.split()
    listed = store.manifest()
    assert sorted(listed) == sorted(tracked), "regenerate it: python -m flowbook store manifest"
    for rel, entry in listed.items():
        data = (store.REPO_ROOT / rel).read_bytes()
        assert (len(data), _sha256(data)) == (entry["size"], entry["sha256"]), rel
    batch = "".join(f"{entry['commit']}:{rel}\n" for rel, entry in listed.items())
    out = subprocess.run(["git", "-C", str(store.REPO_ROOT), "cat-file", "--batch"], input=batch.encode(),
                         capture_output=True, check=True).stdout
    at = 0
    for rel, entry in listed.items():
        end = out.index(b"\n", at)
        header, at = out[at:end], end + 1
        if header.endswith(b"missing"):
            pytest.skip(f"commit {entry['commit'][:12]} is not in this (shallow?) clone")
        size = int(header.split()[2])
        assert _sha256(out[at:at + size]) == entry["sha256"], f"{rel} at {entry['commit'][:12]}"
        at += size + 1


def test_a_download_is_checked_cached_and_then_read_without_the_server(outside_clone, store_server):
    outside_clone(store_server(store.REPO_ROOT))
    path = store.path(BENCH)
    entry = store.manifest()[BENCH]
    assert path == store.cache_dir() / entry["commit"] / BENCH
    assert path.read_bytes() == (store.REPO_ROOT / BENCH).read_bytes()
    assert results.load_result(results.RESULTS_DIR / "bench_dlgm.json")["name"] == "bench_dlgm"
    outside_clone("http://127.0.0.1:9")  # nothing answers there: the cached copy is used
    assert store.path(BENCH) == path
    path.write_bytes(b"damaged")  # a damaged cached copy is downloaded again, not used
    with pytest.raises(store.DownloadError, match="could not download data/results/bench_dlgm.json"):
        store.path(BENCH)
    assert not list(path.parent.glob(".*.tmp"))


def test_a_corrupt_download_is_refused_and_leaves_nothing(outside_clone, store_server, tmp_path):
    served = tmp_path / "served"
    (served / "data" / "results").mkdir(parents=True)
    data = bytearray((store.REPO_ROOT / BENCH).read_bytes())
    data[10] ^= 1
    (served / BENCH).write_bytes(bytes(data))
    outside_clone(store_server(served))
    with pytest.raises(store.DownloadError, match=r"is not the stored data/results/bench_dlgm.json: size "
                                                  r"\d+, sha256 .*the server holds another version"):
        store.path(BENCH)
    with pytest.raises(store.DownloadError, match=r"could not download data/results/bench_flows.json .*404"):
        store.path("data/results/bench_flows.json")
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_an_unlisted_name_is_refused():
    with pytest.raises(store.StoreError, match="data/results/nothing.json is not a stored file"):
        store.path("data/results/nothing.json")


def test_a_changed_local_file_is_refused_with_how_to_restore_it(git_clone):
    store.write_manifest(store.build_manifest(git_clone), store.MANIFEST)
    assert store.path(BENCH) == git_clone / BENCH  # inside a clone: the local file, no network
    (git_clone / BENCH).write_text(json.dumps({**RECORD, "name": "other"}))
    with pytest.raises(store.StoreError, match=r"is not the stored data/results/bench_dlgm.json: size \d+, .*"
                                               r"restore it with `git checkout -- data/results/bench_dlgm.json`"):
        store.path(BENCH)


def test_manifest_refuses_uncommitted_data_and_verify_names_mismatches(git_clone, capsys):
    assert storecli.main(["manifest"]) == 0
    entry = store.manifest()[BENCH]
    head = subprocess.run(["git", "-C", str(git_clone), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    data = json.dumps(RECORD).encode()
    assert entry == {"size": len(data), "sha256": _sha256(data), "commit": head}
    (git_clone / "data" / "results" / "stray_old.json").write_text("{}")
    assert storecli.main(["verify"]) == 0
    assert "not stored (no table reads it): data/results/stray_old.json" in capsys.readouterr().out
    (git_clone / BENCH).write_text(json.dumps({**RECORD, "name": "other"}))
    assert storecli.main(["manifest"]) == 1
    assert "uncommitted changes in data/results/bench_dlgm.json: commit the data files first" in capsys.readouterr().err
    assert json.loads(store.MANIFEST.read_text())["files"][BENCH] == entry  # unchanged
    assert storecli.main(["verify"]) == 1
    err = capsys.readouterr().err
    assert "data/results/bench_dlgm.json is not the stored data/results/bench_dlgm.json" in err
    (git_clone / BENCH).unlink()
    assert storecli.main(["verify"]) == 1
    assert "data/results/bench_dlgm.json is missing; restore it with `git checkout" in capsys.readouterr().err


def test_fetch_command_downloads_a_run_by_name(outside_clone, store_server, capsys):
    outside_clone(store_server(store.REPO_ROOT))
    name = run_name("mnist", "planar", 80, label=pretrained.latest_stage("planar", 80))  # a row with weights
    assert storecli.main(["fetch", name]) == 0
    fetched = capsys.readouterr().out.split()
    assert sorted(p.rsplit("/", 1)[1] for p in fetched) == [f"{name}.json", f"{name}.pt"]
    assert storecli.main(["fetch", "mnist_stored_planar_K7"]) == 1
    assert "'mnist_stored_planar_K7' is neither a stored file nor the name of one" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        storecli.main(["fetch"])


def test_a_stray_result_never_enters_load_results(git_clone):
    """load_results without a directory reads the manifest's files only; with one, the folder's."""
    store.write_manifest(store.build_manifest(git_clone), store.MANIFEST)
    folder = git_clone / "data" / "results"
    (folder / "bench_dlgm_old.json").write_text(json.dumps({**RECORD, "name": "bench_dlgm_old"}))
    shutil.copy(folder / BENCH.rsplit("/", 1)[1], folder / "bench_dlgm_copy.json")
    assert [r["name"] for r in results.load_results("bench")] == ["bench_dlgm"]
    assert [r["name"] for r in results.load_results("bench", folder)] == ["bench_dlgm", "bench_dlgm", "bench_dlgm_old"]


def test_the_stand_in_server_serves_every_folder_the_manifest_lists(outside_clone, store_server):
    """The Colab check downloads through .ci/store_server.py: one file from each folder of the manifest
    (per-digit values sit one folder deeper than the results) comes back as the stored bytes."""
    outside_clone(store_server(store.REPO_ROOT))
    first = {}
    for rel in sorted(store.manifest()):
        first.setdefault(rel.rsplit("/", 1)[0], rel)
    assert "data/results/points" in first
    for rel in first.values():
        assert store.path(rel).read_bytes() == (store.REPO_ROOT / rel).read_bytes(), rel

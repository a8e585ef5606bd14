"""Tests for flowbook.results: provenance is written, read back, and checked."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flowbook import results

ROOT = Path(__file__).resolve().parent.parent


def _save(tmp_path, name: str = "fit_U1", **overrides):
    kwargs = dict(config={"K": 32, "steps": 100}, metrics={"kl": 0.123}, wall_time_s=1.23456,
                  device="cpu", command="python run.py --K 32", directory=tmp_path)
    kwargs.update(overrides)
    return results.save_result(name, **kwargs)


def test_save_and_load_round_trip(tmp_path) -> None:
    path = _save(tmp_path)
    assert path == tmp_path / "fit_U1.json"
    record = results.load_result(path)
    for field in results.REQUIRED:
        assert field in record
    assert record["name"] == "fit_U1"
    assert record["command"] == "python run.py --K 32"
    assert record["config"] == {"K": 32, "steps": 100}
    assert record["metrics"] == {"kl": 0.123}
    assert record["wall_time_s"] == 1.235
    assert record["device"].startswith("cpu: ")
    assert record["torch"] == torch.__version__
    assert record["commit"] == "unknown" or len(record["commit"].split("+")[0]) == 40
    assert not list(tmp_path.glob("*.tmp")), "the temporary file is renamed into place"


def test_default_command_is_the_invocation(tmp_path) -> None:
    record = results.load_result(_save(tmp_path, command=None))
    assert "python" in record["command"] or "pytest" in record["command"]


def test_directory_is_created(tmp_path) -> None:
    path = _save(tmp_path / "a" / "b")
    assert path.exists()


def test_missing_fields_are_named(tmp_path) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"name": "old", "metrics": {}, "config": {}}))
    with pytest.raises(ValueError, match=r"lacks provenance fields \['command', 'commit', 'device', 'date', "
                                         r"'wall_time_s'\]; re-run the experiment"):
        results.load_result(path)


def test_corrupt_json_is_reported(tmp_path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"name": "broken", "metrics": {')
    with pytest.raises(ValueError, match=r"broken.json is not valid JSON .* delete it and re-run"):
        results.load_result(path)


def test_load_results_by_prefix(tmp_path) -> None:
    for name in ("fit_U2", "fit_U1", "dlgm_K10"):
        _save(tmp_path, name=name)
    assert [r["name"] for r in results.load_results("fit_", directory=tmp_path)] == ["fit_U1", "fit_U2"]
    assert len(results.load_results(directory=tmp_path)) == 3


def test_describe_device() -> None:
    assert results.describe_device("cpu").startswith("cpu: ")
    assert results.describe_device(torch.device("cpu")).endswith("threads")


def test_two_writers_of_one_name_do_not_crash_each_other(tmp_path, monkeypatch) -> None:
    """Another process saves the same result between this one's write and rename: both saves succeed."""
    real_replace = results.os.replace
    calls = []

    def replace_after_another_writer(src, dst):
        calls.append(src)
        if len(calls) == 1:  # the other writer runs its whole save here
            _save(tmp_path, metrics={"kl": 2.0})
        real_replace(src, dst)

    monkeypatch.setattr(results.os, "replace", replace_after_another_writer)
    path = _save(tmp_path, metrics={"kl": 1.0})
    assert len(calls) == 2 and calls[0] != calls[1], "each save writes its own temporary file"
    assert results.load_result(path)["metrics"] == {"kl": 1.0}  # the last rename wins, whole
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_a_stale_temporary_file_does_not_block_a_save(tmp_path) -> None:
    (tmp_path / "fit_U1.json.tmp").mkdir()  # e.g. left by a writer of an older version
    assert results.load_result(_save(tmp_path))["name"] == "fit_U1"


def test_non_finite_metrics_are_written_as_null(tmp_path) -> None:
    path = _save(tmp_path, metrics={"kl": float("nan"), "bound": float("inf"), "log": [1.5, float("-inf")]},
                 config={"lr": float("nan"), "rows": (("planar", 2),)})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text

    def strict(token: str):
        raise ValueError(f"non-standard JSON constant {token}")

    record = json.loads(text, parse_constant=strict)  # a strict reader accepts the file
    json.dumps(record, allow_nan=False)
    assert record["metrics"] == {"kl": None, "bound": None, "log": [1.5, None]}
    assert record["config"] == {"lr": None, "rows": [["planar", 2]]}


@pytest.mark.parametrize("content", [b"null", b"5", b"[1, 2]", b'"fit"', b'{"name": "\xff\xfe"}'],
                         ids=["null", "number", "array", "string", "not-utf8"])
def test_a_file_that_is_not_a_record_is_reported_with_its_path(tmp_path, content: bytes) -> None:
    path = tmp_path / "odd.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"odd\.json .*delete it and re-run the experiment"):
        results.load_result(path)


#: One of two processes adding evaluations to one result: it waits for the start signal, so that the two
#: really run at the same time, then adds 40 entries with its own seeds.
_ADDER = """
import sys, time
from pathlib import Path
from flowbook import results
path, start, who = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
start.with_suffix(f".ready{who}").touch()
while not start.exists():
    time.sleep(0.01)
for k in range(40):
    results.add_evaluation(path, {"samples": 10, "points": 5, "seed": 1000 * who + k}, device="cpu", command="t")
"""


def test_two_processes_adding_evaluations_to_one_result_lose_none(tmp_path) -> None:
    """Issue 26, bug 5: add_evaluation reads, appends and writes under the row's lock, so two processes
    adding 40 entries each to one file leave 80."""
    path = _save(tmp_path, name="row")
    start = tmp_path / "start"
    procs = [subprocess.Popen([sys.executable, "-c", _ADDER, str(path), str(start), str(who)], cwd=ROOT)
             for who in (1, 2)]
    deadline = time.monotonic() + 120
    while not all(start.with_suffix(f".ready{who}").exists() for who in (1, 2)) and time.monotonic() < deadline:
        time.sleep(0.05)
    start.touch()
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    seeds = sorted(e["seed"] for e in results.load_result(path)["evaluations"])
    assert seeds == sorted(1000 * who + k for who in (1, 2) for k in range(40))


def test_the_row_lock_is_reentrant_and_excludes_other_holders(tmp_path) -> None:
    """A holder may take its own lock again (finish holds it while add_evaluation takes it); another
    process waits until it is released."""
    probe = ("import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)")
    with results.name_lock(tmp_path, "row") as lock:
        with results.name_lock(tmp_path, "row"):
            assert lock == (tmp_path / ".row.lock").resolve()
        busy = subprocess.run([sys.executable, "-c", probe, str(lock)], capture_output=True)
        assert busy.returncode != 0 and b"BlockingIOError" in busy.stderr
    assert subprocess.run([sys.executable, "-c", probe, str(lock)]).returncode == 0

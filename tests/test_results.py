"""Tests for flowbook.results: provenance is written, read back, and checked."""
from __future__ import annotations

import json

import pytest
import torch

from flowbook import results


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

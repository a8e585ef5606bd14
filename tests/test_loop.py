"""Tests of flowbook.loop: when the shared training loop checkpoints and when it stops."""
from __future__ import annotations

from flowbook.loop import run_updates


def test_checkpoints_every_so_many_updates_and_at_the_end():
    updates, saved = [], []
    done, seconds = run_updates(2, 7, updates.append, lambda d, s: saved.append((d, s)), every=2, seconds_before=5.0)
    assert updates == [2, 3, 4, 5, 6] and done == 7
    assert [d for d, _ in saved] == [4, 6, 7] and all(s >= 5.0 for _, s in saved) and seconds >= 5.0


def test_out_of_time_checkpoints_and_stops_after_the_first_update():
    updates, saved = [], []
    done, _ = run_updates(0, 10, updates.append, lambda d, s: saved.append(d), every=100, max_minutes=1e-12)
    assert updates == [0] and done == 1 and saved == [1]


def test_without_checkpoints_nothing_is_saved_and_a_time_limit_still_stops():
    saved = []
    assert run_updates(0, 3, lambda t: None, lambda d, s: saved.append(d), every=None)[0] == 3
    assert run_updates(0, 3, lambda t: None, lambda d, s: saved.append(d), every=None, max_minutes=1e-12)[0] == 1
    assert saved == []

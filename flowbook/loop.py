"""The resumable training loop every trainer runs: updates one after another, a checkpoint every so many
updates and when it stops, and a stop after a time limit (the runner's ``--max-minutes``).

What an update does (Algorithm 1's step for a DLGM, :func:`flowbook.trainer.train`; the 2-D fits' step,
:func:`flowbook.experiments2d.train`) and what a checkpoint holds are the trainer's; when to save and
when to stop are decided here once.
"""
from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["run_updates"]


def run_updates(first: int, end: int, update: Callable[[int], None], checkpoint: Callable[[int, float], None], *,
                every: int | None, max_minutes: float | None = None, seconds_before: float = 0.0
                ) -> tuple[int, float]:
    """Run ``update(t)`` for t = ``first``, …, ``end`` − 1 (update t takes the parameters from t to t + 1).

    After update t, ``checkpoint(t + 1, seconds)`` is called (``seconds``: the training time so far,
    ``seconds_before`` included) every ``every`` updates, at ``end``, and when more than ``max_minutes``
    have passed in this call, which then stops: run the trainer again to go on from that checkpoint.
    ``every`` None: no checkpoints. Returns (the updates done, the training time)."""
    start = time.perf_counter()
    done = first
    for t in range(first, end):
        update(t)
        done = t + 1
        seconds = time.perf_counter() - start
        out_of_time = max_minutes is not None and seconds > 60 * max_minutes
        if every is not None and (done % every == 0 or done == end or out_of_time):
            checkpoint(done, seconds_before + seconds)
        if out_of_time:
            break
    return done, seconds_before + time.perf_counter() - start

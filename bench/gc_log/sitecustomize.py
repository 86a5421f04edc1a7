"""Logs a process's full garbage collections, for bench.subscriptions (test tooling).

bench.subscriptions puts this folder on the ``PYTHONPATH`` of the publisher it measures, and
nothing else's; with ``MIRRORHOOK_BENCH_GC_LOG`` set, each collection of the oldest
generation appends ``UNIX_TIME SECONDS COLLECTED`` to that file: when it began, how long
the event loop stood still, and how many objects it freed. With ``MIRRORHOOK_BENCH_GC=off``
the cyclic collector is disabled instead (``--publisher-gc off``: what its pauses cost).
"""

from __future__ import annotations

import gc
import os
import time


def _log_full_collections(path: str) -> None:
    began = [0.0, 0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            began[:] = [time.time(), time.perf_counter()]
            return
        took = time.perf_counter() - began[1]
        with open(path, "a") as log:  # noqa: PTH123 - a few bytes, after the timing
            log.write(f"{began[0]:.6f} {took:.6f} {info['collected']}\n")

    gc.callbacks.append(callback)


if os.environ.get("MIRRORHOOK_BENCH_GC") == "off":
    gc.disable()
if _path := os.environ.get("MIRRORHOOK_BENCH_GC_LOG"):
    _log_full_collections(_path)

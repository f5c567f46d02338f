"""Timing helpers shared by the benchmark sections."""
from __future__ import annotations

import contextlib
import time


@contextlib.contextmanager
def step(label: str):
    print(f"  {label} ...", end="", flush=True)
    start = time.perf_counter()
    yield
    print(f" {time.perf_counter() - start:.1f} s", flush=True)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start

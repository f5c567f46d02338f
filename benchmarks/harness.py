"""What the benchmark sections share: timing, and the model-alone pass their pipelines are measured against."""
from __future__ import annotations

import contextlib
import time

import torch

THROUGHPUT_TARGET = 0.8   # a raster pipeline must keep >= 80% of the bare model's pixel rate


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


@torch.inference_mode()
def forward_all(model: torch.nn.Module, batches: list[torch.Tensor], device: torch.device) -> None:
    for batch in batches:
        torch.softmax(model(batch.to(device)), dim=1).cpu()  # .cpu() also waits for a GPU

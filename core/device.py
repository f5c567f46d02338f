"""Device choice and out-of-memory recovery shared by inference pipelines."""
from __future__ import annotations

from typing import Callable

import torch

from core.catalog import DEVICE_CHOICES
from core.progress import Progress



def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without one is an error, not a silent CPU run."""
    name = (name or "auto").lower()
    if name not in DEVICE_CHOICES and not name.startswith("cuda:"):
        raise ValueError(f"Unknown device '{name}'; use one of {', '.join(DEVICE_CHOICES)}.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("Device 'cuda' was requested but no CUDA GPU is available; use 'auto' or 'cpu'.")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


class BatchRunner:
    """Runs a model over a batch; on CUDA out-of-memory it halves the batch and retries,
    and below one sample it moves the model to the CPU and says so."""

    def __init__(self, model: torch.nn.Module, device: torch.device, progress: Progress | None = None):
        self.model = model.to(device).eval()
        self.device = device
        self.progress = progress or Progress()
        self.max_batch: int | None = None

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor, forward: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]
                 ) -> torch.Tensor:
        size = min(len(batch), self.max_batch or len(batch))
        outputs, start = [], 0
        while start < len(batch):
            chunk = batch[start:start + size]
            try:
                outputs.append(forward(self.model, chunk.to(self.device)).float().cpu())
                start += len(chunk)
            except torch.cuda.OutOfMemoryError:
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if size > 1:
                    size //= 2
                    self.max_batch = size
                    self.progress.warning(f"GPU out of memory: retrying with batch size {size}.")
                elif self.device.type != "cpu":
                    self.progress.warning("GPU out of memory even with one tile: continuing on the CPU (slower).")
                    self.device = torch.device("cpu")
                    self.model = self.model.to(self.device)
                else:
                    raise
        return torch.cat(outputs)

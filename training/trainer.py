"""The training loop every subcommand shares.

Step-based loop with resume (the step count continues), optional EMA of the weights,
AMP on CUDA, DDP under torchrun (gloo on CPU, nccl on CUDA), tqdm progress, a CSV log
and a PNG plot of the curves. A subcommand supplies the model, the data and two
callables: the loss of one batch and (optionally) a validation that returns metrics.
"""
from __future__ import annotations

import csv
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from core.device import resolve_device

STATE_NAME = "training_state.pt"


@dataclass
class TrainSettings:
    run_dir: str
    steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 1e-4
    ema_decay: float = 0.0          # 0 disables EMA
    val_every: int = 250            # 0: never validate
    checkpoint_every: int = 250
    warmup_steps: int = 50
    seed: int = 0
    device: str = "auto"
    resume: bool = False


class Distributed:
    """World info from torchrun's environment; a single process otherwise."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            if device.type == "cuda":
                torch.cuda.set_device(self.local_rank)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, model: torch.nn.Module, settings: TrainSettings,
                 parameters: Iterable[torch.nn.Parameter] | None = None):
        self.settings = settings
        device = resolve_device(settings.device)
        self.dist = Distributed(device)
        if device.type == "cuda" and self.dist.world > 1:
            device = torch.device("cuda", self.dist.local_rank)
        self.device = device
        seed_everything(settings.seed + self.dist.rank)
        self.model = model.to(device)
        self.ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(settings.ema_decay), use_buffers=True)
                    if settings.ema_decay > 0 else None)
        self.wrapped = (torch.nn.parallel.DistributedDataParallel(self.model, find_unused_parameters=False)
                        if self.dist.world > 1 else self.model)
        params = [p for p in (parameters or self.model.parameters()) if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.amp = device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.step = 0
        self.run_dir = Path(settings.run_dir)
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, str]] = []
        if settings.resume:
            self._load_state()
            self.rows = [r for r in self._read_log() if int(float(r["step"])) <= self.step]

    def loader(self, dataset, batch_size: int, num_workers: int = 0) -> torch.utils.data.DataLoader:
        """Shuffled batches; under torchrun each process gets its own share of the data."""
        sampler = (torch.utils.data.distributed.DistributedSampler(dataset, seed=self.settings.seed)
                   if self.dist.world > 1 else None)
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                                           num_workers=num_workers,
                                           drop_last=len(dataset) // self.dist.world > batch_size)

    def balanced_loader(self, real, synthetic, batch_size: int, ratio: float,
                        num_workers: int = 0) -> torch.utils.data.DataLoader:
        """Batches mixing real and synthetic samples 1 : ratio; each torchrun process takes its share."""
        from core.data.balanced import BalancedBatchSampler
        sampler = BalancedBatchSampler(len(real), len(synthetic), batch_size, ratio, self.settings.seed,
                                       self.dist.rank, self.dist.world)
        return torch.utils.data.DataLoader(torch.utils.data.ConcatDataset([real, synthetic]), batch_sampler=sampler,
                                           num_workers=num_workers)

    def _lr_factor(self, step: int) -> float:
        """Linear warm-up, then cosine decay to 5% of the base rate."""
        s = self.settings
        if step < s.warmup_steps:
            return (step + 1) / s.warmup_steps
        progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights to evaluate and export: the EMA copy when enabled."""
        return self.ema.module if self.ema is not None else self.model

    def fit(self, loader: torch.utils.data.DataLoader,
            loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
            validate: Callable[[torch.nn.Module], dict[str, float]] | None = None) -> dict[str, float]:
        """Train until `settings.steps`; return the last validation metrics."""
        s = self.settings
        if s.val_every <= 0:
            validate = None
        if len(loader) == 0:
            raise ValueError("The training set yields no batch: add data or lower batch_size.")
        metrics: dict[str, float] = {}
        validated = False
        bar = tqdm(total=s.steps, initial=self.step, desc="training", disable=not self.dist.main, unit="step")
        epoch = self.step // max(1, len(loader))
        while self.step < s.steps:
            if hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)
            for batch in loader:
                loss = self._train_step(batch, loss_fn)
                self.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                row = {"step": self.step, "loss": loss, "lr": self.scheduler.get_last_lr()[0]}
                if validate is not None and (self.step % s.val_every == 0 or self.step == s.steps):
                    if self.dist.main:
                        metrics = validate(self.eval_model)
                        validated = True
                        row.update(metrics)
                        bar.write(f"step {self.step}: " + ", ".join(
                            f"{k}={v:.4f}" for k, v in metrics.items() if "/" not in k))
                    self.dist.barrier()
                self.rows.append({k: str(v) for k, v in row.items()})
                if self.step % s.checkpoint_every == 0 or self.step == s.steps:
                    self.save_state()
                if self.step >= s.steps:
                    break
            epoch += 1
        bar.close()
        if validate is not None and not validated and self.dist.main:   # resumed a finished run: still report
            metrics = validate(self.eval_model)
        if self.dist.main:
            self._plot()
        return metrics

    def export(self, card) -> Path:
        """Write `<run>/model` (card + the evaluation weights) from the main process; end DDP."""
        from core.checkpoint import save_model
        model_dir = self.run_dir / "model"
        if self.dist.main:
            save_model(model_dir, card, self.eval_model.state_dict())
        self.dist.close()
        return model_dir

    def _train_step(self, batch, loss_fn) -> float:
        self.wrapped.train()
        batch = _to_device(batch, self.device)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            loss = loss_fn(self.wrapped, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return float(loss.detach())

    # --- checkpoints (our own files: tensors and plain values, read with weights_only=True)

    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_NAME

    def save_state(self) -> None:
        if not self.dist.main:
            return
        state = {"step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        tmp = self.state_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.state_path)
        self._write_log()

    def _load_state(self) -> None:
        if not self.state_path.is_file():
            raise FileNotFoundError(f"--resume: no {STATE_NAME} in {self.run_dir}.")
        state = torch.load(self.state_path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        self.step = int(state["step"])

    # --- logs

    @property
    def log_path(self) -> Path:
        return self.run_dir / "log.csv"

    def _write_log(self) -> None:
        fields = list(dict.fromkeys(k for r in self.rows for k in r))
        with open(self.log_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.rows)

    def _read_log(self) -> list[dict[str, str]]:
        if not self.log_path.is_file():
            return []
        with open(self.log_path, newline="") as f:
            return list(csv.DictReader(f))

    def _plot(self) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        rows = self.rows
        series = [k for k in (rows[0] if rows else {}) if k not in ("step", "lr") and "/" not in k]
        fig, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3), squeeze=False)
        for ax, key in zip(axes[0], series):
            pts = [(float(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
            ax.plot(*zip(*pts), marker="." if key != "loss" else None)
            ax.set_title(key)
            ax.set_xlabel("step")
        fig.tight_layout()
        fig.savefig(self.run_dir / "curves.png", dpi=80)
        plt.close(fig)


def _to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def stacked(dataset) -> list[torch.Tensor]:
    """Every item of a small fixed dataset as one batch per field (the preview / validation patches)."""
    return [torch.stack(field) for field in zip(*(dataset[i] for i in range(len(dataset))))]

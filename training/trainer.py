"""The training loop every subcommand shares.

Step-based loop with exact resume, optional EMA of the weights, AMP on CUDA, DDP under
torchrun (gloo on CPU, nccl on CUDA), tqdm progress, a CSV log and a PNG plot of the
curves. A subcommand supplies the model, the data and two callables: the loss of one
batch and (optionally) a validation that returns metrics.

Exact resume: the training state holds the weights, optimiser, LR schedule, AMP scaler,
EMA, every process's RNG states (python, numpy, torch, CUDA) and the data position (epoch
and batches consumed in it). The loaders made here draw each epoch's batches from
(seed, epoch) alone, so a run killed after a checkpoint and resumed sees the same batches
and random draws as an uninterrupted run (with num_workers=0; worker processes reseed
their augmentations when a run resumes mid-epoch).
"""
from __future__ import annotations

import csv
import itertools
import logging
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

from core.device import resolve_device, training_autocast_dtype

STATE_NAME = "training_state.pt"
log = logging.getLogger("rs_diffusion")


class TrainingError(ValueError):
    """A run that cannot start or go on (its config, data or saved state): one message in the user's terms."""


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


def rng_state() -> dict[str, Any]:
    """Every random generator's state as tensors and plain values (what weights_only=True reads)."""
    _, python_keys, python_gauss = random.getstate()
    _, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state()
    return {"python": torch.tensor(python_keys, dtype=torch.int64), "python_gauss": python_gauss,
            "numpy": torch.from_numpy(numpy_keys.astype(np.int64)), "numpy_pos": int(numpy_pos),
            "numpy_gauss": [int(numpy_has_gauss), float(numpy_gauss)], "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((3, tuple(state["python"].tolist()), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].cpu().numpy().astype(np.uint32), state["numpy_pos"],
                         *state["numpy_gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class ResumableBatches(torch.utils.data.Sampler):
    """Index batches of one epoch, a fixed function of (seed, epoch), from batch `skip` on.

    A resumed run sets the epoch and the batches the interrupted run had consumed, so it goes on
    with exactly the batches the uninterrupted run would have, without reading the skipped ones.
    """

    def __init__(self, batches: torch.utils.data.Sampler, set_epoch: Callable[[int], None]):
        self.batches, self.set_epoch, self.skip = batches, set_epoch, 0

    def set_position(self, epoch: int, skip: int) -> None:
        self.set_epoch(epoch)
        self.skip = skip

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return itertools.islice(iter(self.batches), self.skip, None)


def _epoch_seed(seed: int, rank: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])


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
        self.amp_dtype = training_autocast_dtype(device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.step = 0
        self.position: tuple[int, int] | None = None    # (epoch, batches of it consumed) at self.step
        self.saved_rng: dict[str, Any] | None = None     # RNG states to restore when fit starts
        self.run_dir = Path(settings.run_dir)
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, str]] = []
        if settings.resume:
            self._load_state()
            self.rows = [r for r in self._read_log() if int(float(r["step"])) <= self.step]

    def loader(self, dataset, batch_size: int, num_workers: int = 0) -> torch.utils.data.DataLoader:
        """Shuffled batches, a new order every epoch; under torchrun each process gets its own share."""
        order = torch.utils.data.distributed.DistributedSampler(
            dataset, num_replicas=self.dist.world, rank=self.dist.rank, shuffle=True, seed=self.settings.seed)
        batches = torch.utils.data.BatchSampler(order, batch_size,
                                                drop_last=len(dataset) // self.dist.world > batch_size)
        return self._resumable_loader(dataset, ResumableBatches(batches, order.set_epoch), num_workers)

    def balanced_loader(self, real, synthetic, batch_size: int, ratio: float,
                        num_workers: int = 0) -> torch.utils.data.DataLoader:
        """Batches mixing real and synthetic samples 1 : ratio; each torchrun process takes its share."""
        from core.data.balanced import BalancedBatchSampler
        seed = self.settings.seed
        batches = BalancedBatchSampler(len(real), len(synthetic), batch_size, ratio, seed, self.dist.rank,
                                       self.dist.world)
        return self._resumable_loader(torch.utils.data.ConcatDataset([real, synthetic]),
                                      ResumableBatches(batches, lambda epoch: batches.generator.manual_seed(
                                          _epoch_seed(seed, 0, epoch))), num_workers)

    def _resumable_loader(self, dataset, batches: ResumableBatches, num_workers: int) -> torch.utils.data.DataLoader:
        """Its own generator seeds the workers, so making an iterator never draws from torch's global one."""
        return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                                           generator=torch.Generator())

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
            raise TrainingError("The training set yields no batch: add data or lower batch_size.")
        metrics: dict[str, float] = {}
        validated = False
        batches = loader.batch_sampler if isinstance(loader.batch_sampler, ResumableBatches) else None
        epoch, consumed = self.position if batches is not None and self.position else (self.step // len(loader), 0)
        if self.saved_rng is not None:   # now: building the model and data may have drawn random numbers
            set_rng_state(self.saved_rng)
            self.saved_rng = None
        bar = tqdm(total=s.steps, initial=self.step, desc="training", disable=not self.dist.main, unit="step")
        while self.step < s.steps:
            if batches is not None:
                batches.set_position(epoch, consumed)
            elif hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)
            if loader.generator is not None:
                loader.generator.manual_seed(_epoch_seed(s.seed, self.dist.rank, epoch))
            for batch in loader:
                loss = self._train_step(batch, loss_fn)
                self.step += 1
                consumed += 1
                self.position = (epoch, consumed)
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
            epoch, consumed = epoch + 1, 0
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
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None):
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
        """Called by every process (they all hand in their RNG states); the main one writes."""
        rng = [rng_state()]
        if self.dist.world > 1:
            rng = [None] * self.dist.world
            dist.all_gather_object(rng, rng_state())
        if not self.dist.main:
            return
        state = {"step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng,
                 "position": list(self.position) if self.position else None}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        tmp = self.state_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.state_path)
        self._write_log()

    def _load_state(self) -> None:
        if not self.state_path.is_file():
            raise TrainingError(f"--resume: there is no {STATE_NAME} in {self.run_dir}: check --output, or leave "
                                "out --resume to start a new run.")
        try:   # weights_only: tensors and plain values; pickled code is refused, never run
            state = torch.load(self.state_path, map_location=self.device, weights_only=True)
        except Exception as exc:
            raise TrainingError(f"Cannot resume from {self.state_path}: it is damaged, cut short or not a training "
                                "state written by `python -m training`. Delete it to start over, or restore a good "
                                "copy.") from exc
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            if self.ema is not None and "ema" in state:
                self.ema.load_state_dict(state["ema"])
            self.step = int(state["step"])
        except Exception as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise TrainingError(f"Cannot resume from {self.state_path}: it does not fit this run's model or config "
                                f"({reason}). Resume with the config that wrote it, or delete it to start "
                                "over.") from exc
        rng, position = state.get("rng"), state.get("position")
        if rng and len(rng) == self.dist.world and position:
            self.saved_rng, self.position = rng[self.dist.rank], (int(position[0]), int(position[1]))
        elif self.dist.main:
            log.warning("%s holds no RNG states and data position for %d process(es) (an older state or another "
                        "process count): the run goes on from step %d, but its batches and random draws differ "
                        "from an uninterrupted run's.", self.state_path, self.dist.world, self.step)

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
        """loss.png beside the log; skipped where matplotlib is missing (a QGIS without it trains all the same)."""
        try:
            import matplotlib
        except ImportError:
            return
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

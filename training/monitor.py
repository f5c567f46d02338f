"""What an interactive caller (the fine-tuning call, a QGIS task) sees of a training run, without changing the
Trainer: every step's loss and every validation's scores go to a Progress (and an optional callback, for a
live curve); a cancel keeps a checkpoint of the last finished step; a time budget ends the run early.

The trainers wrap their loss and validation functions with `monitored`; without a monitor they run as before.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from core.progress import Cancelled, Progress

# on_step(step, values): {"loss": x} after every optimiser step; after a validation, a second call with its scores
# ({"mIoU": ..., "IoU/oil": ...} or, for change, {"IoU": ..., "F1": ...}).
StepCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainingMonitor:
    progress: Progress = field(default_factory=Progress)
    on_step: StepCallback | None = None
    time_budget_s: float = 0.0          # 0: none; else the run ends (validated, saved, exported) after this
    report_every: int = 1               # progress.info a loss line every this many steps
    started: float = field(default_factory=time.monotonic)
    stopped_early: bool = False

    def out_of_time(self) -> bool:
        return self.time_budget_s > 0 and time.monotonic() - self.started > self.time_budget_s


def monitored(trainer, loss_fn, validate, monitor: TrainingMonitor | None):
    """(loss_fn, validate) reporting to `monitor`: per-step loss lines "step N/M: loss X" and validation lines
    "validation at step N: k=v, ...", each also passed to monitor.on_step. A cancel saves the training state of
    the last finished step and raises Cancelled; an exhausted time budget makes the current step the last one."""
    if monitor is None:
        return loss_fn, validate
    progress, settings = monitor.progress, trainer.settings

    def loss_with_reports(net, batch):
        if progress.is_canceled():
            if trainer.step > 0:
                trainer.save_state()
            raise Cancelled(f"Training cancelled at step {trainer.step}; the training state is kept, "
                            "run again with the same output to go on.")
        if monitor.out_of_time() and trainer.step + 1 < settings.steps:
            settings.steps = trainer.step + 1      # the Trainer validates, checkpoints and stops after this step
            monitor.stopped_early = True
            progress.info(f"Time budget of {monitor.time_budget_s / 60:g} min reached: stopping at step "
                          f"{settings.steps}.")
        loss = loss_fn(net, batch)
        step, value = trainer.step + 1, float(loss.detach())
        if step % monitor.report_every == 0 or step == settings.steps:
            progress.info(f"step {step}/{settings.steps}: loss {value:.4f}")
        progress.set_fraction(step / max(settings.steps, 1))
        if monitor.on_step is not None:
            monitor.on_step(step, {"loss": value})
        return loss

    if validate is None:
        return loss_with_reports, None

    def validate_with_reports(net):
        scores = validate(net)
        shown = {k: v for k, v in scores.items() if "/" not in k}
        progress.info(f"validation at step {trainer.step}: " + ", ".join(f"{k}={v:.4f}" for k, v in shown.items()))
        if monitor.on_step is not None:
            monitor.on_step(trainer.step, dict(scores))
        return scores

    return loss_with_reports, validate_with_reports

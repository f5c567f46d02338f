"""One progress/cancel protocol for every pipeline and trainer.

Core code only talks to a `Progress`; the plugin adapts it to QgsTask or
QgsProcessingFeedback, the CLI to tqdm. Cancellation is cooperative: pipelines call
`check()` between units of work and it raises `Cancelled`.
"""
from __future__ import annotations

import logging

log = logging.getLogger("rs_diffusion")


class Cancelled(Exception):
    """The user cancelled the job; outputs have been cleaned up."""


class Progress:
    """Base sink: logs messages and never cancels. Subclass and override what you need."""

    def set_fraction(self, fraction: float) -> None:
        """Report overall completion in [0, 1]."""

    def is_canceled(self) -> bool:
        return False

    def info(self, message: str) -> None:
        log.info(message)

    def warning(self, message: str) -> None:
        log.warning(message)

    def check(self) -> None:
        if self.is_canceled():
            raise Cancelled("Cancelled by the user.")

    def step(self, done: int, total: int) -> None:
        """Report `done` of `total` units and stop here if the user cancelled."""
        self.set_fraction(done / total if total else 1.0)
        self.check()


class TqdmProgress(Progress):
    """Progress for the command line."""

    def __init__(self, desc: str = "", unit: str = "it"):
        from tqdm.auto import tqdm
        self._bar = tqdm(total=1000, desc=desc, unit=unit, bar_format="{l_bar}{bar}| {elapsed}<{remaining}")

    def set_fraction(self, fraction: float) -> None:
        self._bar.n = int(round(1000 * min(max(fraction, 0.0), 1.0)))
        self._bar.refresh()

    def info(self, message: str) -> None:
        self._bar.write(message)

    def warning(self, message: str) -> None:
        self._bar.write(f"warning: {message}")

    def close(self) -> None:
        self._bar.close()


class SubProgress(Progress):
    """Maps [0, 1] of a sub-job onto [start, end] of a parent's progress."""

    def __init__(self, parent: Progress, start: float, end: float):
        self.parent, self.start, self.end = parent, start, end

    def set_fraction(self, fraction: float) -> None:
        self.parent.set_fraction(self.start + (self.end - self.start) * fraction)

    def is_canceled(self) -> bool:
        return self.parent.is_canceled()

    def info(self, message: str) -> None:
        self.parent.info(message)

    def warning(self, message: str) -> None:
        self.parent.warning(message)

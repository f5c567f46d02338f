"""Adapters from core's Progress protocol to QGIS: a QgsTask and a Processing feedback."""
from __future__ import annotations

from qgis.core import QgsMessageLog, QgsProcessingFeedback, QgsTask, Qgis

from core.progress import Progress

LOG_TAG = "rs-diffusion"


class TaskProgress(Progress):
    """Runs in the task's worker thread; messages go to the task's signal (queued to the GUI)."""

    def __init__(self, task: QgsTask, message_signal):
        self.task = task
        self.message_signal = message_signal

    def set_fraction(self, fraction: float) -> None:
        self.task.setProgress(100.0 * fraction)

    def is_canceled(self) -> bool:
        return self.task.isCanceled()

    def info(self, message: str) -> None:
        QgsMessageLog.logMessage(message, LOG_TAG, Qgis.MessageLevel.Info)
        self.message_signal.emit(message)

    def warning(self, message: str) -> None:
        QgsMessageLog.logMessage(message, LOG_TAG, Qgis.MessageLevel.Warning)
        self.message_signal.emit(f"Warning: {message}")


class FeedbackProgress(Progress):
    def __init__(self, feedback: QgsProcessingFeedback | None):
        self.feedback = feedback or QgsProcessingFeedback()

    def set_fraction(self, fraction: float) -> None:
        self.feedback.setProgress(100.0 * fraction)

    def is_canceled(self) -> bool:
        return self.feedback.isCanceled()

    def info(self, message: str) -> None:
        self.feedback.pushInfo(message)

    def warning(self, message: str) -> None:
        self.feedback.pushWarning(message)

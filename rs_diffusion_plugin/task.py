"""CoreTask: run one core pipeline call in a QgsTask, so QGIS never freezes."""
from __future__ import annotations

import traceback
from typing import Any, Callable

from qgis.core import QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from core.progress import Cancelled
from rs_diffusion_plugin.progress import TaskProgress


class CoreTask(QgsTask):
    """`function(params, progress)` in a worker thread; the outcome arrives in the GUI
    thread through `succeeded(result)`, `failed(message)` or `cancelled()`."""

    message = pyqtSignal(str)
    succeeded = pyqtSignal(object)
    failed = pyqtSignal(str)
    cancelled = pyqtSignal()

    def __init__(self, description: str, function: Callable[[Any, Any], Any], params: Any):
        super().__init__(description, QgsTask.Flag.CanCancel)
        self.function, self.params = function, params
        self.result: Any = None
        self.error: str = ""

    def run(self) -> bool:
        try:
            self.result = self.function(self.params, TaskProgress(self, self.message))
            return True
        except Cancelled:
            return False
        except Exception as exc:  # reported to the user in finished(), never raised in a worker thread
            self.error = f"{exc}"
            self.details = traceback.format_exc()
            return False

    def finished(self, ok: bool) -> None:
        if ok:
            self.succeeded.emit(self.result)
        elif self.isCanceled() and not self.error:
            self.cancelled.emit()
        else:
            self.failed.emit(self.error or "The task stopped unexpectedly.")

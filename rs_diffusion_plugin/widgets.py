"""Widgets every dock tab is made of: the model picker and the tab with Run / Cancel / progress / log."""
from __future__ import annotations

import tempfile
from pathlib import Path

from qgis.core import QgsApplication, QgsProcessingUtils
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtWidgets import (QComboBox, QHBoxLayout, QLabel, QPlainTextEdit, QProgressBar, QPushButton,
                                 QVBoxLayout, QWidget)

from core.catalog import DEVICE_CHOICES, starter_model_dir
from rs_diffusion_plugin.task import CoreTask


class ModelPicker(QWidget):
    """A model folder (starter by default) and one line saying what the card holds, or what is wrong."""

    def __init__(self, task: str, parent=None):
        super().__init__(parent)
        self.task = task
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.file_widget = QgsFileWidget()
        self.file_widget.setStorageMode(QgsFileWidget.GetDirectory)
        self.label = QLabel()
        self.label.setWordWrap(True)
        layout.addWidget(self.file_widget)
        layout.addWidget(self.label)
        self.file_widget.fileChanged.connect(self.describe)
        self.file_widget.setFilePath(str(starter_model_dir(task)))
        self.describe(self.path())

    def path(self) -> str:
        return self.file_widget.filePath()

    def describe(self, path: str) -> None:
        from core.checkpoint import ModelError, load_card
        try:
            card = load_card(path, task=self.task)
        except ModelError as exc:
            self.label.setText(f"<span style='color:#b00'>{exc}</span>")
            return
        classes = ", ".join(c.name for c in card.classes)
        self.label.setText(f"{card.name}: bands {', '.join(card.bands)}; classes {classes}")


class TaskTab(QWidget):
    """A tab with a form on top and Run / Cancel / progress / log below.

    Subclasses build the form in `build_form(layout)`, turn it into core parameters in
    `make_task()` and use the result in `on_success(result)`.
    """

    title = ""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.task: CoreTask | None = None
        layout = QVBoxLayout(self)
        self.build_form(layout)
        buttons = QHBoxLayout()
        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 100)
        layout.addWidget(self.progress_bar)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(2000)
        layout.addWidget(self.log)
        self.run_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)

    def add_device_row(self, form) -> None:
        """A "Device" row (auto / cuda / cpu) as `self.device_combo`."""
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICE_CHOICES)
        form.addRow("Device", self.device_combo)

    def add_raster_output_row(self, form, label: str) -> None:
        """A GeoTIFF save-file row as `self.output_widget`; left empty it means a temporary file."""
        self.output_widget = QgsFileWidget()
        self.output_widget.setStorageMode(QgsFileWidget.SaveFile)
        self.output_widget.setFilter("GeoTIFF (*.tif)")
        self.output_widget.lineEdit().setPlaceholderText("[temporary file]")
        form.addRow(label, self.output_widget)

    def output_path(self, prefix: str, file_name: str) -> str:
        """The chosen output file, or `file_name` in a new folder of the Processing temp folder."""
        if self.output_widget.filePath():
            return self.output_widget.filePath()
        return str(Path(tempfile.mkdtemp(prefix=prefix, dir=QgsProcessingUtils.tempFolder())) / file_name)

    def start(self) -> None:
        try:
            task = self.make_task()
        except ValueError as exc:  # the form's own validation, already worded for the user
            self.write(f"Error: {exc}")
            return
        self.task = task
        task.progressChanged.connect(lambda value: self.progress_bar.setValue(int(value)))
        task.message.connect(self.write)
        task.succeeded.connect(self._succeeded)
        task.failed.connect(self._failed)
        task.cancelled.connect(self._cancelled)
        self._set_running(True)
        self.progress_bar.setValue(0)
        self.write(f"Started: {task.description()}")
        QgsApplication.taskManager().addTask(task)

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def write(self, message: str) -> None:
        self.log.appendPlainText(message)

    def _succeeded(self, result) -> None:
        self._set_running(False)
        self.progress_bar.setValue(100)
        self.on_success(result)

    def _failed(self, message: str) -> None:
        self._set_running(False)
        self.write(f"Error: {message}")

    def _cancelled(self) -> None:
        self._set_running(False)
        self.progress_bar.setValue(0)
        self.write("Cancelled: nothing was written.")

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        if not running:
            self.task = None

    @property
    def running(self) -> bool:
        return self.task is not None

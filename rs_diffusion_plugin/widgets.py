"""Widgets every dock tab is made of: layer and model pickers, explained form rows, and the tab with
Run / Cancel / progress / log."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from qgis.core import (Qgis, QgsApplication, QgsMapLayerProxyModel, QgsProcessingUtils, QgsProject,
                       QgsRasterLayer)
from qgis.gui import QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel,
                                 QPlainTextEdit, QProgressBar, QPushButton, QVBoxLayout, QWidget)

from core.catalog import DEVICE_CHOICES, card_summary, models_for_task, read_card
from rs_diffusion_plugin.install_dialog import InstallModelsDialog, library_events
from rs_diffusion_plugin.task import CoreTask

# GDAL data types of class rasters: band values that are class ids
INTEGER_TYPES = (Qgis.DataType.Byte, Qgis.DataType.UInt16, Qgis.DataType.Int16, Qgis.DataType.UInt32,
                 Qgis.DataType.Int32)


def single_band(layer: QgsRasterLayer) -> bool:
    """A SAR scene: one band of backscatter (an RGB layer is not one)."""
    return layer.bandCount() == 1


def single_band_integer(layer: QgsRasterLayer) -> bool:
    """A classification: one band of integer class values (an RGB band would pass for 255 classes)."""
    return layer.bandCount() == 1 and layer.dataProvider().dataType(1) in INTEGER_TYPES


def add_row(form: QFormLayout, label: str, field: QWidget, tip: str = "") -> None:
    """A form row whose label and field both say on hover what the value does (`tip`, else the field's own)."""
    tip = tip or field.toolTip()
    field.setToolTip(tip)
    label_widget = QLabel(label)
    label_widget.setToolTip(tip)
    form.addRow(label_widget, field)


class LayerPicker(QgsMapLayerComboBox):
    """The raster layers of the project that `fits` accepts, kept up to date as layers are added.

    `keep_apart_from(other)` makes a two-input tab start with two different layers: whenever layers are
    added and both pickers show the same one, this picker moves to the next one it lists.
    """

    def __init__(self, fits: Callable[[QgsRasterLayer], bool] | None = None, parent=None):
        super().__init__(parent)
        self.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
        self.fits = fits
        self.other: LayerPicker | None = None
        if fits is not None:
            QgsProject.instance().layersAdded.connect(self.refilter)
            self.refilter()

    def refilter(self) -> None:
        layers = QgsProject.instance().mapLayers().values()
        self.setExceptedLayerList([layer for layer in layers
                                   if isinstance(layer, QgsRasterLayer) and not self.fits(layer)])

    def keep_apart_from(self, other: LayerPicker) -> None:
        # Connected after both pickers' refilter, so both lists are final when it runs
        self.other = other
        QgsProject.instance().layersAdded.connect(self.move_off_other)
        self.move_off_other()

    def move_off_other(self) -> None:
        taken = self.other.currentLayer()
        if taken is None or self.currentLayer() is not taken:
            return
        for row in range(self.count()):
            layer = self.layer(row)
            if layer is not None and layer is not taken:
                self.setLayer(layer)
                return


class ModelPicker(QWidget):
    """The model a tab runs, listed by name: the task's models in the user model library, the installed
    starter pack and (in a developer checkout) the repository, the folders browsed to in this QGIS session,
    or Browse...; below, the chosen card's summary (name, task, classes, bands, ground resolution) or what
    is wrong with it. Where no model of the task is installed it says so and offers the models pack."""

    changed = pyqtSignal(str)   # the chosen model folder
    browsed: dict[str, list[str]] = {}   # task -> model folders browsed to in this session, oldest first

    def __init__(self, task: str, parent=None):
        super().__init__(parent)
        self.task = task
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.combo = QComboBox()
        self.combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.browse_button = QPushButton("Browse...")
        row.addWidget(self.combo, 1)
        row.addWidget(self.browse_button)
        layout.addLayout(row)
        self.label = QLabel()
        self.label.setWordWrap(True)
        layout.addWidget(self.label)
        self.install_button = QPushButton("Install starter models…")
        self.install_button.setToolTip("Install the rs-diffusion models pack (rs_diffusion_models-<version>.zip) "
                                       "from a file or a URL into your model library")
        layout.addWidget(self.install_button)
        self.setToolTip("The task's models in your model library (starter models and your own), the model folders "
                        "browsed to in this session, or Browse... for another folder holding model.json and its "
                        "weights")
        self.refresh()
        self.combo.currentIndexChanged.connect(self._chosen)
        self.browse_button.clicked.connect(self.browse)
        self.install_button.clicked.connect(self.install_models)
        library_events.changed.connect(self.refresh)

    def path(self) -> str:
        return self.combo.currentData() or ""

    def refresh(self) -> None:
        """List the library's models again (after an install), keeping the chosen one when it is still there."""
        chosen = self.path()
        self.combo.blockSignals(True)
        self.combo.clear()
        installed = models_for_task(self.task)
        for model in installed:
            self._add(model.name, model.path)
        for folder in self.browsed.get(self.task, []):
            if Path(folder).is_dir() and self.combo.findData(folder) < 0:
                self._add(model_name(folder), folder)
        self.combo.setCurrentIndex(max(self.combo.findData(chosen), 0) if chosen else 0)
        self.combo.blockSignals(False)
        self.install_button.setVisible(not installed)
        self.describe(self.path())
        if self.path() != chosen:
            self.changed.emit(self.path())

    def set_path(self, folder: str) -> None:
        """Choose `folder`, adding it to the list (and to this session's browsed models) when it is new."""
        folder = str(folder)
        index = self.combo.findData(folder)
        if index < 0:
            known = self.browsed.setdefault(self.task, [])
            if folder not in known:
                known.append(folder)
            index = self._add(model_name(folder), folder)
        self.combo.setCurrentIndex(index)

    def browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder", self.path())
        if folder:
            self.set_path(folder)

    def install_models(self) -> None:
        InstallModelsDialog(self).exec()

    def describe(self, path: str) -> None:
        if not path:
            self.label.setText(f"No '{self.task}' model is installed yet: install the starter models pack, or "
                               "Browse... to a model folder.")
            return
        from core.checkpoint import ModelError, load_card
        try:
            card = load_card(path, task=self.task)
        except ModelError as exc:
            self.label.setText(f"<span style='color:#b00'>{exc}</span>")
            return
        self.label.setText(f"{card.name}: {card_summary(read_card(path) or {})}")

    def _add(self, name: str, folder: str) -> int:
        self.combo.addItem(name, folder)
        index = self.combo.count() - 1
        self.combo.setItemData(index, folder, Qt.ItemDataRole.ToolTipRole)
        return index

    def _chosen(self) -> None:
        self.describe(self.path())
        self.changed.emit(self.path())


def model_name(folder: str) -> str:
    """The name on a model folder's card, or the folder's name when it has no readable card."""
    card = read_card(folder)
    return str(card.get("name") or Path(folder).name) if card else Path(folder).name


class TaskTab(QWidget):
    """A tab with a form on top and Run / Cancel / progress / log below.

    Subclasses build the form in `build_form(layout)`, turn it into core parameters in
    `make_task()` and use the result in `on_success(result)`.
    """

    title = ""
    cancelled_message = "Cancelled: nothing was written."   # what a cancel leaves behind

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

    def add_device_row(self, form: QFormLayout) -> None:
        """A "Device" row (auto / cuda / cpu) as `self.device_combo`."""
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICE_CHOICES)
        add_row(form, "Device", self.device_combo, "auto: the GPU (CUDA) when there is one, else the CPU")

    def add_resample_row(self, form: QFormLayout, layers: str = "the layer") -> None:
        """An unticked "Resample to the model's resolution" check box as `self.resample_check`."""
        self.resample_check = QCheckBox("Resample to the model's resolution")
        add_row(form, "", self.resample_check, f"Read {layers} at the model's ground resolution (its card); the "
                "outputs are then on that grid. Off: read as they are, with a warning when the resolution is more "
                "than 2x off the model's")

    def add_raster_output_row(self, form: QFormLayout, label: str) -> None:
        """A GeoTIFF save-file row as `self.output_widget`; left empty it means a temporary file."""
        self.output_widget = QgsFileWidget()
        self.output_widget.setStorageMode(QgsFileWidget.StorageMode.SaveFile)
        self.output_widget.setFilter("GeoTIFF (*.tif)")
        self.output_widget.lineEdit().setPlaceholderText("[temporary file]")
        add_row(form, label, self.output_widget, "The GeoTIFF to write; left empty, a temporary file that is "
                "added to the map")

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
        self.write(self.cancelled_message)

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        if not running:
            self.task = None

    @property
    def running(self) -> bool:
        return self.task is not None

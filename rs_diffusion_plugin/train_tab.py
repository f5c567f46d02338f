"""The dock's "Train" tab: an image layer (two for change) + a labels layer -> a model fitted to them, written to
the user model library where every picker of its task lists it by name.

The tab is a form over training.finetune.fit_to_layers (as rsdiffusion:train_* and `python -m training finetune`
are); the fit runs in a CoreTask, imported in its worker thread. Every step's loss and every validation's scores
reach the GUI thread through a Qt signal and are drawn by TrainingCurve.
"""
from __future__ import annotations

import re

from qgis.core import QgsMapLayerProxyModel, QgsRasterLayer, QgsVectorLayer
from qgis.gui import QgsFieldComboBox, QgsMapLayerComboBox
from qgis.PyQt.QtCore import QPointF, QRectF, Qt, pyqtSignal
from qgis.PyQt.QtGui import QColor, QPainter, QPen, QPolygonF
from qgis.PyQt.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QLineEdit, QSpinBox,
                                 QWidget)

from core.catalog import model_library
from core.oilspill.saross import TASK as OILSPILL_CARD_TASK
from core.segmentation.pipeline import TASK as SEGMENTATION_CARD_TASK
from rs_diffusion_plugin.algorithms.detect_changes import TASK as CHANGE_CARD_TASK
from rs_diffusion_plugin.algorithms.train_common import DEFAULT_STEPS
from rs_diffusion_plugin.install_dialog import library_events
from rs_diffusion_plugin.layers import raster_source, vector_source
from rs_diffusion_plugin.task import CoreTask
from rs_diffusion_plugin.widgets import LayerPicker, ModelPicker, TaskTab, add_row

# FitParams.task -> (what the form calls it, the task on its models' cards, the score the log compares, the tab
# that applies its models)
TASKS = {"segmentation": ("Segmentation", SEGMENTATION_CARD_TASK, "mIoU", "Segment"),
         "oilspill": ("Oil spills", OILSPILL_CARD_TASK, "mIoU", "Oil spills"),
         "change": ("Change detection", CHANGE_CARD_TASK, "IoU", "Change")}
LOSS_COLOR, SCORE_COLOR = QColor("#1f77b4"), QColor("#ff7f0e")


class TrainingCurve(QWidget):
    """The run's loss after every step (blue line, scaled to its own range) and the held-out score after each
    validation (orange dots, on a 0-1 scale), drawn with QPainter: no plotting library in the plugin."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.losses: list[tuple[int, float]] = []   # (step, loss)
        self.scores: list[tuple[int, float]] = []   # (step, held-out score)
        self.score_name = ""
        self.setMinimumHeight(160)
        self.setToolTip("Live training curve: the loss after every step (blue, falling as the model fits your "
                        "labels) and the score on the held-out block after each validation (orange, 0-1, higher "
                        "is better)")

    def clear(self) -> None:
        self.losses, self.scores, self.score_name = [], [], ""
        self.update()

    def add(self, step: int, values: dict) -> None:
        """One report of FitParams.on_step: {"loss": x}, or a validation's scores (the first overall score is shown:
        mIoU, IoU...; per-class ones hold a "/")."""
        if "loss" in values:
            self.losses.append((step, float(values["loss"])))
        else:
            overall = [key for key in values if "/" not in key]
            if overall:
                self.score_name = overall[0]
                self.scores.append((step, float(values[overall[0]])))
        self.update()

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.fillRect(self.rect(), self.palette().base())
        plot = QRectF(self.rect()).adjusted(52, 18, -12, -22)
        painter.setPen(QPen(self.palette().mid().color()))
        painter.drawRect(plot)
        text = self.palette().text().color()
        painter.setPen(text)
        if not self.losses and not self.scores:
            painter.drawText(plot, Qt.AlignmentFlag.AlignCenter, "The loss and held-out score appear here")
            return
        last_step = max([s for s, _ in self.losses + self.scores] + [1])
        low = min((v for _, v in self.losses), default=0.0)
        high = max((v for _, v in self.losses), default=1.0)
        high = high if high > low else low + 1.0

        def point(step: int, value: float, bottom: float, top: float) -> QPointF:
            return QPointF(plot.left() + plot.width() * step / last_step,
                           plot.bottom() - plot.height() * (value - bottom) / (top - bottom))

        painter.drawText(QRectF(0, plot.top(), 48, 16), Qt.AlignmentFlag.AlignRight, f"{high:.2g}")
        painter.drawText(QRectF(0, plot.bottom() - 16, 48, 16), Qt.AlignmentFlag.AlignRight, f"{low:.2g}")
        painter.drawText(QRectF(plot.left(), plot.bottom() + 4, plot.width(), 16), Qt.AlignmentFlag.AlignRight,
                         f"step {last_step}")
        painter.setPen(LOSS_COLOR)
        painter.drawText(QRectF(plot.left(), 0, plot.width() / 2, 16), Qt.AlignmentFlag.AlignLeft,
                         f"loss {self.losses[-1][1]:.4f}" if self.losses else "loss")
        if self.losses:
            painter.setPen(QPen(LOSS_COLOR, 1.5))
            painter.drawPolyline(QPolygonF([point(s, v, low, high) for s, v in self.losses]))
        if self.scores:
            painter.setPen(SCORE_COLOR)
            painter.drawText(QRectF(plot.center().x(), 0, plot.width() / 2, 16), Qt.AlignmentFlag.AlignRight,
                             f"held-out {self.score_name} {self.scores[-1][1]:.3f}")
            painter.setBrush(SCORE_COLOR)
            for step, value in self.scores:
                painter.drawEllipse(point(step, min(max(value, 0.0), 1.0), 0.0, 1.0), 3.5, 3.5)


class TrainTab(TaskTab):
    title = "Train"
    cancelled_message = ("Cancelled: the training state of the last finished step is kept; Train again with the "
                         "same layers and name to go on from it.")
    step_reported = pyqtSignal(int, object)   # FitParams.on_step, emitted in the worker thread

    def __init__(self, parent=None):
        super().__init__(parent)
        self.run_button.setText("Train")
        self.step_reported.connect(self.curve.add)

    def build_form(self, layout) -> None:
        self.form = form = QFormLayout()
        self.task_combo = QComboBox()
        for task, (label, *_) in TASKS.items():
            self.task_combo.addItem(label, task)
        add_row(form, "Task", self.task_combo, "What the new model does: classify land cover (Segment tab), find "
                "oil slicks in SAR (Oil spills tab) or find changes between two dates (Change tab)")
        self.image_combo = LayerPicker()
        add_row(form, "Image layer", self.image_combo, "The image the labels describe (change detection: the "
                "earlier date); any band count and data type, normalised on its own values")
        self.image_b_combo = LayerPicker()
        add_row(form, "Date B layer", self.image_b_combo, "The later image, co-registered onto the grid of the "
                "image layer as the Change tab does")
        self.image_b_combo.keep_apart_from(self.image_combo)
        self.labels_combo = QgsMapLayerComboBox()
        self.labels_combo.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer
                                     | QgsMapLayerProxyModel.Filter.PolygonLayer)
        add_row(form, "Labels layer", self.labels_combo, "Where you know the answer: a class raster (the base "
                "model's class values; change: 0/1 or 0/255) or polygons (with a class field; change: polygons "
                "= change). Only the labelled part is trained on; nodata and unlabelled pixels are ignored")
        self.class_field_combo = QgsFieldComboBox()
        add_row(form, "Class field", self.class_field_combo, "The polygons' attribute holding the class, as a "
                "value or a name; names that match the base model's classes keep what it learnt of them")
        self.land_combo = QgsMapLayerComboBox()
        self.land_combo.setFilters(QgsMapLayerProxyModel.Filter.PolygonLayer)
        self.land_combo.setAllowEmptyLayer(True)
        self.land_combo.setLayer(None)
        add_row(form, "Land mask (optional)", self.land_combo, "Polygons of land, left out of training as the "
                "Oil spills tab leaves them out of detection")
        self.model_picker = ModelPicker(SEGMENTATION_CARD_TASK)
        add_row(form, "Base model", self.model_picker, "The model to start from (default: the task's starter): "
                "its encoder and decoder are kept, its head is rebuilt when your classes differ")
        self.scratch_check = QCheckBox("From scratch (random weights, not the base model)")
        add_row(form, "", self.scratch_check, "Start from random weights: needs many more labels and steps than "
                "fine-tuning a base model")
        self.encoder_edit = QLineEdit()
        self.encoder_edit.setPlaceholderText("the starter's")
        add_row(form, "Encoder", self.encoder_edit, "From scratch only: an encoder of segmentation_models_pytorch "
                "(e.g. resnet18) or timm as tu-<name>; empty: the starter's")
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 1_000_000)
        add_row(form, "Steps", self.steps_spin, "Optimiser steps; the task's default finishes within about 10 "
                "minutes on a 2-core CPU (seconds on a GPU)")
        self.time_spin = QDoubleSpinBox()
        self.time_spin.setRange(0.0, 24 * 60.0)
        self.time_spin.setDecimals(1)
        self.time_spin.setSuffix(" min")
        self.time_spin.setSpecialValueText("none")
        add_row(form, "Time budget", self.time_spin, "Stop (validated and saved) when this time is spent, even "
                "before all steps; none: run all steps")
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("e.g. my fields 2024")
        add_row(form, "Model name", self.name_edit, "The new model's name in every model picker; it is written to "
                "a folder of that name in your model library (a model of the same name is replaced)")
        self.add_device_row(form)
        layout.addLayout(form)
        self.curve = TrainingCurve()
        layout.addWidget(self.curve)
        self.task_combo.currentIndexChanged.connect(self.task_changed)
        self.labels_combo.layerChanged.connect(self.labels_changed)
        self.scratch_check.toggled.connect(self.scratch_toggled)
        self.task_changed()
        self.labels_changed(self.labels_combo.currentLayer())
        self.scratch_toggled(False)

    def fit_task(self) -> str:
        return self.task_combo.currentData()

    def task_changed(self) -> None:
        """Show the rows of the chosen task, list its models and set its default budget."""
        task = self.fit_task()
        self.show_row(self.image_b_combo, task == "change")
        self.show_row(self.land_combo, task == "oilspill")
        self.form.labelForField(self.image_combo).setText("Date A layer" if task == "change" else "Image layer")
        self.labels_changed(self.labels_combo.currentLayer())
        self.model_picker.task = TASKS[task][1]
        self.model_picker.refresh()
        self.steps_spin.setValue(DEFAULT_STEPS[task])

    def labels_changed(self, layer) -> None:
        """Polygons of a multi-class task need a class field; a class raster and change polygons do not."""
        polygons = isinstance(layer, QgsVectorLayer)
        self.class_field_combo.setLayer(layer if polygons else None)
        self.show_row(self.class_field_combo, polygons and self.fit_task() != "change")

    def scratch_toggled(self, scratch: bool) -> None:
        self.model_picker.setEnabled(not scratch)
        self.encoder_edit.setEnabled(scratch)

    def show_row(self, field: QWidget, visible: bool) -> None:
        field.setVisible(visible)
        self.form.labelForField(field).setVisible(visible)

    def model_folder(self) -> str:
        """`<library>/<name>`: the model name as a folder name (characters a file system may refuse become _)."""
        name = self.name_edit.text().strip()
        if not name:
            raise ValueError("Model name: give the new model a name; it is listed by that name in the model "
                             "pickers.")
        library = model_library()
        if library is None:
            raise ValueError("No model library is set (the plugin sets it at start): the new model has nowhere "
                             "to go.")
        folder = re.sub(r"[^\w.-]+", "_", name).strip("._")
        if not folder:
            raise ValueError(f"Model name '{name}' has no letter or digit to name its folder: choose another name.")
        return str(library / folder)

    def make_task(self) -> CoreTask:
        task, output_model = self.fit_task(), self.model_folder()
        image = self.image_combo.currentLayer()
        options = dict(task=task, image_path=raster_source(image), output_model=output_model,
                       name=self.name_edit.text().strip(), steps=self.steps_spin.value(),
                       time_budget_minutes=self.time_spin.value(), device=self.device_combo.currentText(),
                       base_model="scratch" if self.scratch_check.isChecked() else self.model_picker.path(),
                       encoder=self.encoder_edit.text().strip() if self.scratch_check.isChecked() else "",
                       on_step=self.step_reported.emit, **self.labels_options(task))
        if task == "change":
            options["image_b_path"] = raster_source(self.image_b_combo.currentLayer())
        if task == "oilspill" and self.land_combo.currentLayer() is not None:
            options["land_mask_path"], options["land_mask_layer"] = vector_source(self.land_combo.currentLayer())
        self.trained_task = task
        self.curve.clear()
        return CoreTask(f"Train '{options['name']}' on {image.name()}", run_fit, options)

    def labels_options(self, task: str) -> dict:
        """labels_path (+ labels_layer and class_field of polygons) of the labels layer."""
        labels = self.labels_combo.currentLayer()
        if labels is None:
            raise ValueError("Labels layer: add a class raster or a polygon layer of labels to the project.")
        if isinstance(labels, QgsRasterLayer):
            return {"labels_path": raster_source(labels)}
        path, layer = vector_source(labels)
        options = {"labels_path": path, "labels_layer": layer}
        if task != "change":
            options["class_field"] = self.class_field_combo.currentField()
        return options

    def on_success(self, result) -> None:
        library_events.changed.emit()   # every picker lists the new model by name
        _, _, key, applied_in = TASKS[self.trained_task]
        self.write(f"Model in your library ({result.steps} steps, {result.train_patches} training and "
                   f"{result.holdout_patches} held-out patches"
                   f"{', stopped by the time budget' if result.stopped_early else ''}): choose it by name in the "
                   f"{applied_in} tab.")
        if result.scores:
            base = result.base_scores.get(key)
            versus = f"base model '{result.base_model}' {base:.3f}, " if base is not None else ""
            self.write(f"Held-out {key}: {versus}fine-tuned {result.scores.get(key, float('nan')):.3f}.")
        else:
            self.write("Not scored: no block of the labelled area could be held out.")


def run_fit(options: dict, progress):
    """training.finetune.fit_to_layers from plain values, imported in the task's worker thread (torch and the
    trainers load there, not in the GUI thread)."""
    from training.finetune import FitParams, fit_to_layers
    return fit_to_layers(FitParams(**options), progress)

"""The dock's "Synthesize" tab: a SatSynth model -> new image/mask pairs, previewed in the panel."""
from __future__ import annotations

import tempfile

from qgis.core import QgsProcessingUtils
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QPixmap
from qgis.PyQt.QtWidgets import QCheckBox, QComboBox, QFormLayout, QLabel, QScrollArea, QSpinBox

from core.synthesis.generate import SynthesisParams, synthesize_pairs
from core.synthesis.satsynth import SR_TASK, TASK
from rs_diffusion_plugin.layers import add_pair_layers
from rs_diffusion_plugin.task import CoreTask
from rs_diffusion_plugin.widgets import ModelPicker, TaskTab

SAMPLER_ITEMS = (("DDIM (fast)", "ddim"), ("DDPM, 1000 steps (paper)", "ddpm"))
PREVIEW_WIDTH = 320


class SynthesizeTab(TaskTab):
    title = "Synthesize"

    def build_form(self, layout) -> None:
        form = QFormLayout()
        self.model_picker = ModelPicker(TASK)
        form.addRow("Model", self.model_picker)
        self.count_spin = QSpinBox()
        self.count_spin.setRange(1, 100000)
        self.count_spin.setValue(8)
        form.addRow("Number of pairs", self.count_spin)
        self.sampler_combo = QComboBox()
        for text, value in SAMPLER_ITEMS:
            self.sampler_combo.addItem(text, value)
        form.addRow("Sampler", self.sampler_combo)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 1000)
        self.steps_spin.setValue(50)
        form.addRow("DDIM steps", self.steps_spin)
        self.sr_check = QCheckBox("x2 super-resolution stage")
        form.addRow("", self.sr_check)
        self.sr_picker = ModelPicker(SR_TASK)
        form.addRow("x2 model", self.sr_picker)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        form.addRow("Seed", self.seed_spin)
        self.add_device_row(form)
        self.output_widget = QgsFileWidget()
        self.output_widget.setStorageMode(QgsFileWidget.GetDirectory)
        self.output_widget.lineEdit().setPlaceholderText("[temporary folder]")
        form.addRow("Output folder", self.output_widget)
        self.add_layers_check = QCheckBox("Add the pairs to the map as layers")
        form.addRow("", self.add_layers_check)
        layout.addLayout(form)
        self.preview = QLabel("Generated pairs (image | mask) appear here.")
        self.preview.setAlignment(Qt.AlignHCenter | Qt.AlignTop)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.preview)
        layout.addWidget(scroll, 1)
        self.sampler_combo.currentIndexChanged.connect(self._update_enabled)
        self.sr_check.toggled.connect(self._update_enabled)
        self._update_enabled()

    def _update_enabled(self) -> None:
        self.steps_spin.setEnabled(self.sampler_combo.currentData() == "ddim")
        self.sr_picker.setEnabled(self.sr_check.isChecked())

    def make_task(self) -> CoreTask:
        output = self.output_widget.filePath() or tempfile.mkdtemp(prefix="pairs_", dir=QgsProcessingUtils.tempFolder())
        params = SynthesisParams(
            output_dir=output, count=self.count_spin.value(), model_dir=self.model_picker.path(),
            sampler=self.sampler_combo.currentData(), steps=self.steps_spin.value(),
            super_resolution=self.sr_check.isChecked(), sr_model_dir=self.sr_picker.path(),
            seed=self.seed_spin.value(), device=self.device_combo.currentText())
        return CoreTask(f"Synthesize {params.count} pairs", synthesize_pairs, params)

    def on_success(self, result) -> None:
        pixmap = QPixmap(result.preview_path)
        self.preview.setPixmap(pixmap.scaledToWidth(min(PREVIEW_WIDTH, pixmap.width() * 2), Qt.FastTransformation))
        self.write(f"{len(result.pairs)} pairs of {result.size} px written to {result.output_dir} "
                   f"({result.seconds:.1f} s on {result.device}); index: {result.index_path}")
        if self.add_layers_check.isChecked():
            added = add_pair_layers(result.pairs, result.classes, "Synthetic pairs")
            self.write(f"Added {len(added) // 2} pairs as layers in the group 'Synthetic pairs'.")

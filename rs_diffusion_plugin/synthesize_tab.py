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
from rs_diffusion_plugin.widgets import ModelPicker, TaskTab, add_row

SAMPLER_ITEMS = (("DDIM (fast)", "ddim"), ("DDPM, 1000 steps (paper)", "ddpm"))
PREVIEW_WIDTH = 320


class SynthesizeTab(TaskTab):
    title = "Synthesize"

    def build_form(self, layout) -> None:
        form = QFormLayout()
        self.model_picker = ModelPicker(TASK)
        add_row(form, "Model", self.model_picker)
        self.count_spin = QSpinBox()
        self.count_spin.setRange(1, 100000)
        self.count_spin.setValue(8)
        add_row(form, "Number of pairs", self.count_spin, "How many image + mask pairs to generate")
        self.sampler_combo = QComboBox()
        for text, value in SAMPLER_ITEMS:
            self.sampler_combo.addItem(text, value)
        add_row(form, "Sampler", self.sampler_combo, "DDIM: a few deterministic steps, fast; DDPM: the paper's "
                "1000 ancestral steps, slow")
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 1000)
        self.steps_spin.setValue(50)
        add_row(form, "DDIM steps", self.steps_spin, "Denoising steps of the DDIM sampler (default 50); more "
                "steps, finer detail and longer runs")
        self.sr_check = QCheckBox("x2 super-resolution stage")
        add_row(form, "", self.sr_check, "SatSynth's second stage: doubles the resolution of each pair with the "
                "x2 model below")
        self.sr_picker = ModelPicker(SR_TASK)
        add_row(form, "x2 model", self.sr_picker)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        add_row(form, "Seed", self.seed_spin, "The same seed and settings give the same pairs")
        self.add_device_row(form)
        self.output_widget = QgsFileWidget()
        self.output_widget.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.output_widget.lineEdit().setPlaceholderText("[temporary folder]")
        add_row(form, "Output folder", self.output_widget, "Where the pairs, a preview and an index are written; "
                "left empty, a temporary folder")
        self.add_layers_check = QCheckBox("Add the pairs to the map as layers")
        add_row(form, "", self.add_layers_check, "Each pair as an image layer and a styled mask layer, in a "
                "collapsed group 'Synthetic pairs'")
        layout.addLayout(form)
        self.preview = QLabel("Generated pairs (image | mask) appear here.")
        self.preview.setAlignment(Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop)
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
        self.preview.setPixmap(pixmap.scaledToWidth(min(PREVIEW_WIDTH, pixmap.width() * 2),
                                                     Qt.TransformationMode.FastTransformation))
        self.write(f"{len(result.pairs)} pairs of {result.size} px written to {result.output_dir} "
                   f"({result.seconds:.1f} s on {result.device}); index: {result.index_path}")
        if self.add_layers_check.isChecked():
            added = add_pair_layers(result.pairs, result.classes, "Synthetic pairs")
            self.write(f"Added {len(added) // 2} pairs as layers in the group 'Synthetic pairs'.")

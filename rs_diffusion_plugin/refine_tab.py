"""The dock's "Refine" tab: image + classification layer + IDGBR model -> refined classification layer."""
from __future__ import annotations

from pathlib import Path

from qgis.PyQt.QtWidgets import (QAbstractItemView, QCheckBox, QComboBox, QFormLayout, QHeaderView, QLabel, QSpinBox,
                                 QTableWidget, QTableWidgetItem)

from core.refinement.model import TASK
from core.refinement.pipeline import RefineParams, refine_raster
from rs_diffusion_plugin.layers import add_refined_outputs, class_style, class_values, raster_source
from rs_diffusion_plugin.task import CoreTask
from rs_diffusion_plugin.widgets import LayerPicker, ModelPicker, TaskTab, add_row, single_band_integer

NOT_MAPPED = "(choose a model class)"


class RefineTab(TaskTab):
    title = "Refine"

    def build_form(self, layout) -> None:
        form = QFormLayout()
        self.image_combo = LayerPicker()
        add_row(form, "Image layer", self.image_combo, "The image the classification was made from; it guides "
                "where the class boundaries go")
        self.classification_combo = LayerPicker(single_band_integer)
        add_row(form, "Classification layer", self.classification_combo, "The class map to refine: the project's "
                "single-band integer rasters")
        self.image_combo.keep_apart_from(self.classification_combo)
        self.model_picker = ModelPicker(TASK)
        add_row(form, "Model", self.model_picker)
        self.samples_spin = QSpinBox()
        self.samples_spin.setRange(1, 64)
        add_row(form, "Samples per tile", self.samples_spin, "Diffusion runs per tile with different seeds, "
                "their class probabilities averaged; more samples, steadier boundaries and a meaningful "
                "uncertainty layer, at that many times the time (default 1)")
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(0, 1000)
        self.steps_spin.setSpecialValueText("model's")
        add_row(form, "Sampling steps", self.steps_spin, "DDIM steps per sample; \"model's\" uses the model "
                "card's sampling_steps (25 for the starter)")
        self.add_device_row(form)
        self.add_raster_output_row(form, "Refined raster")
        self.uncertainty_check = QCheckBox("Also add an uncertainty layer (entropy, sample disagreement)")
        add_row(form, "", self.uncertainty_check, "Two 0..1 bands: the entropy of the averaged class probabilities "
                "and the share of samples that disagree with the result (needs 2+ samples)")
        layout.addLayout(form)
        self.mapping_label = QLabel("Model class of each classification value (matching values are set "
                                    "automatically):")
        self.mapping_label.setWordWrap(True)
        layout.addWidget(self.mapping_label)
        self.mapping_table = QTableWidget(0, 2)
        self.mapping_table.setHorizontalHeaderLabels(["Classification value", "Model class"])
        self.mapping_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.mapping_table.verticalHeader().setVisible(False)
        self.mapping_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        layout.addWidget(self.mapping_table)
        self.layer_values: list[tuple[int, str]] = []   # (value, legend label) of the classification layer
        self.model_readable = False
        # How the running task's result is named and styled: after the classification it refines
        self.result_name, self.result_style = "", None
        self.classification_combo.layerChanged.connect(self.read_layer_values)
        self.model_picker.changed.connect(self.fill_mapping_table)
        self.read_layer_values(self.classification_combo.currentLayer())

    def read_layer_values(self, layer) -> None:
        self.layer_values = class_values(layer) if layer is not None and layer.isValid() else []
        self.fill_mapping_table()

    def fill_mapping_table(self) -> None:
        """One row per classification value, its model class preselected when the values match."""
        from core.checkpoint import ModelError, load_card
        try:
            classes = load_card(self.model_picker.path(), task=TASK).classes
        except ModelError:
            classes = []   # the model picker says what is wrong, and so will a run
        self.model_readable = bool(classes)
        self.mapping_table.setRowCount(len(self.layer_values))
        for row, (value, label) in enumerate(self.layer_values):
            self.mapping_table.setItem(row, 0, QTableWidgetItem(f"{value} {label}".strip()))
            combo = QComboBox()
            combo.addItem(NOT_MAPPED, None)
            for model_class in classes:
                combo.addItem(f"{model_class.value}: {model_class.name}", model_class.value)
            combo.setCurrentIndex(max(combo.findData(value), 0))
            self.mapping_table.setCellWidget(row, 1, combo)
        visible = bool(self.layer_values)
        self.mapping_label.setVisible(visible)
        self.mapping_table.setVisible(visible)

    def value_map(self, layer_name: str) -> dict[int, int] | None:
        """The table as a value map; None (by value) when the model cannot be read, so the run reports why."""
        if not self.model_readable:
            return None
        mapping = {}
        for row, (value, _) in enumerate(self.layer_values):
            model_value = self.mapping_table.cellWidget(row, 1).currentData()
            if model_value is None:
                raise ValueError(f"Value {value} of layer '{layer_name}' has no model class: "
                                 "choose one in the value table.")
            mapping[value] = model_value
        return mapping

    def make_task(self) -> CoreTask:
        image, classification = self.image_combo.currentLayer(), self.classification_combo.currentLayer()
        image_path, classification_path = raster_source(image), raster_source(classification)
        value_map = self.value_map(classification.name())
        output = self.output_path("refine_", f"{classification.name()}_refined.tif")
        stem = str(Path(output).with_suffix(""))
        params = RefineParams(
            image_path=image_path, classification_path=classification_path, output_path=output,
            model_dir=self.model_picker.path(), samples=self.samples_spin.value(), steps=self.steps_spin.value(),
            uncertainty_path=f"{stem}_uncertainty.tif" if self.uncertainty_check.isChecked() else "",
            value_map=value_map, device=self.device_combo.currentText(),
            image_layer_name=image.name(), classification_layer_name=classification.name())
        self.result_name, self.result_style = classification.name(), class_style(classification)
        return CoreTask(f"Refine {classification.name()}", refine_raster, params)

    def on_success(self, result) -> None:
        added = add_refined_outputs(result.output_path, result.uncertainty_path, self.result_style, self.result_name)
        names = ", ".join(f"'{layer.name()}'" for layer in added)
        by_class = ", ".join(f"{name} {share:.1%}" for name, share in (result.changed_by_class or {}).items())
        self.write(f"Added {names}: {result.changed_fraction:.1%} of the pixels changed class"
                   + (f" ({by_class})" if by_class else "")
                   + f" ({result.tiles} tiles, {result.seconds:.1f} s on {result.device}).")

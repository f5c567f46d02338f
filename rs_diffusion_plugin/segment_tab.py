"""The dock's "Segment" tab: raster layer + model -> styled class layer."""
from __future__ import annotations

from pathlib import Path

from qgis.PyQt.QtWidgets import QCheckBox, QFormLayout, QSpinBox

from core.segmentation.pipeline import TASK, SegmentParams, segment_raster
from rs_diffusion_plugin.layers import add_class_outputs, raster_source
from rs_diffusion_plugin.task import CoreTask
from rs_diffusion_plugin.widgets import LayerPicker, ModelPicker, TaskTab, add_row


class SegmentTab(TaskTab):
    title = "Segment"

    def build_form(self, layout) -> None:
        form = QFormLayout()
        self.layer_combo = LayerPicker()
        add_row(form, "Raster layer", self.layer_combo, "The image to classify; it needs the bands the model's "
                "card lists, in that order")
        self.model_picker = ModelPicker(TASK)
        add_row(form, "Model", self.model_picker)
        self.add_device_row(form)
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(0, 4096)
        self.tile_spin.setSpecialValueText("model's")
        add_row(form, "Tile size", self.tile_spin, "Pixels per tile side fed to the model; \"model's\" uses "
                "the tile size it was trained on (its card)")
        self.overlap_spin = QSpinBox()
        self.overlap_spin.setRange(0, 1024)
        self.overlap_spin.setValue(32)
        add_row(form, "Tile overlap", self.overlap_spin, "Pixels neighbouring tiles share; their predictions are "
                "blended there so no seams show (default 32)")
        self.add_resample_row(form)
        self.add_raster_output_row(form, "Class raster")
        self.polygons_check = QCheckBox("Also write class polygons (GeoPackage)")
        add_row(form, "", self.polygons_check, "One polygon per connected patch of a class, with its class id")
        self.probabilities_check = QCheckBox("Also write class probabilities")
        add_row(form, "", self.probabilities_check, "A float raster with one band per class: the model's "
                "probability of that class at each pixel")
        layout.addLayout(form)

    def make_task(self) -> CoreTask:
        layer = self.layer_combo.currentLayer()
        output = self.output_path("segment_", f"{layer.name() if layer else 'segmentation'}_classes.tif")
        stem = str(Path(output).with_suffix(""))
        params = SegmentParams(
            input_path=raster_source(layer), output_path=output, model_dir=self.model_picker.path(),
            device=self.device_combo.currentText(), tile_size=self.tile_spin.value(),
            overlap=self.overlap_spin.value(), resample_to_model=self.resample_check.isChecked(),
            polygons_path=f"{stem}_polygons.gpkg" if self.polygons_check.isChecked() else "",
            probabilities_path=f"{stem}_probabilities.tif" if self.probabilities_check.isChecked() else "",
            layer_name=layer.name())
        return CoreTask(f"Segment {layer.name()}", segment_raster, params)

    def on_success(self, result) -> None:
        name = Path(result.output_path).stem
        add_class_outputs(result.output_path, result.polygons_path, result.classes, name)
        self.write(f"Added '{name}' ({result.tiles} tiles, {result.seconds:.1f} s on {result.device}).")

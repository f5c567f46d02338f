"""The dock's "Change" tab: two dates of one place + a change detector -> a styled change raster (+ polygons).

Creating the tab reads the model's card only (core.checkpoint.load_card); core.change (the detector,
the tiled pipeline) is imported by the task, in its worker thread.
"""
from __future__ import annotations

import math
from pathlib import Path

from qgis.core import QgsProject, QgsRasterLayer, QgsVectorLayer
from qgis.PyQt.QtWidgets import QCheckBox, QFormLayout

from rs_diffusion_plugin.algorithms.detect_changes import TASK, style_change_layer, style_change_polygons
from rs_diffusion_plugin.layers import raster_source
from rs_diffusion_plugin.task import CoreTask
from rs_diffusion_plugin.widgets import LayerPicker, ModelPicker, TaskTab, add_row


class ChangeTab(TaskTab):
    title = "Change"

    def build_form(self, layout) -> None:
        form = QFormLayout()
        self.layer_a_combo = LayerPicker()
        add_row(form, "Date A layer", self.layer_a_combo, "The earlier image; the change raster is on this "
                "layer's grid")
        self.layer_b_combo = LayerPicker()
        add_row(form, "Date B layer", self.layer_b_combo, "The later image, resampled onto the grid of date A when "
                "the grids differ")
        self.layer_b_combo.keep_apart_from(self.layer_a_combo)
        self.model_picker = ModelPicker(TASK)
        add_row(form, "Change detector", self.model_picker, "The starter detector was trained on procedural "
                "scenes; train your own with `python -m training changedet`")
        self.add_device_row(form)
        self.add_resample_row(form, "date A (date B then follows its grid)")
        self.add_raster_output_row(form, "Change raster")
        self.polygons_check = QCheckBox("Also write change polygons with their area (GeoPackage)")
        add_row(form, "", self.polygons_check, "One polygon per connected patch of change, with its area in m² "
                "and km²")
        layout.addLayout(form)

    def make_task(self) -> CoreTask:
        layer_a, layer_b = self.layer_a_combo.currentLayer(), self.layer_b_combo.currentLayer()
        path_a, path_b = raster_source(layer_a), raster_source(layer_b)
        output = self.output_path("change_", f"{layer_b.name()}_changes.tif")
        options = dict(
            input_a_path=path_a, input_b_path=path_b, output_path=output, model_dir=self.model_picker.path(),
            polygons_path=f"{Path(output).with_suffix('')}.gpkg" if self.polygons_check.isChecked() else "",
            device=self.device_combo.currentText(), resample_to_model=self.resample_check.isChecked(),
            name_a=layer_a.name(), name_b=layer_b.name())
        return CoreTask(f"Detect changes from {layer_a.name()} to {layer_b.name()}", run_change_detection, options)

    def on_success(self, result) -> None:
        name = Path(result.output_path).stem
        project = QgsProject.instance()
        changes = QgsRasterLayer(result.output_path, name)
        if changes.isValid():
            style_change_layer(changes)
            project.addMapLayer(changes)
        details = [f"{result.changed_pixels} changed pixel(s)"]
        if math.isfinite(result.changed_area_km2):
            details.append(f"{result.changed_area_km2:.4f} km² changed")
        if result.polygons_path:
            polygons = QgsVectorLayer(result.polygons_path, f"{name} polygons", "ogr")
            if polygons.isValid():
                style_change_polygons(polygons)
                project.addMapLayer(polygons)
            details.append(f"{result.polygons} change polygon(s)")
        details.append(f"{result.tiles} tile(s)")
        if result.resampled:
            details.append("date B resampled onto the grid of date A")
        self.write(f"Added '{name}' ({'; '.join(details)}; {result.seconds:.1f} s on {result.device}).")


def run_change_detection(options: dict, progress):
    """core.change.pipeline.detect_changes from plain values, imported in the task's worker thread
    (the torch model loads there, not in the GUI thread)."""
    from core.change.pipeline import ChangeParams, detect_changes
    return detect_changes(ChangeParams(**options), progress)

"""The dock's "Oil spills" tab: SAR layer (+ land mask) + SAROSS-Net -> styled oil classes and slick polygons."""
from __future__ import annotations

from pathlib import Path

from qgis.core import QgsMapLayerProxyModel
from qgis.gui import QgsMapLayerComboBox, QgsRasterBandComboBox
from qgis.PyQt.QtWidgets import QCheckBox, QComboBox, QFormLayout

from core.data.sar_scaling import INPUT_KINDS
from core.oilspill.pipeline import OilSpillParams, detect_oil_spills
from core.oilspill.saross import TASK
from rs_diffusion_plugin.layers import add_class_outputs, raster_source, vector_source
from rs_diffusion_plugin.task import CoreTask
from rs_diffusion_plugin.widgets import LayerPicker, ModelPicker, TaskTab, add_row, single_band


class OilSpillTab(TaskTab):
    title = "Oil spills"

    def build_form(self, layout) -> None:
        form = QFormLayout()
        self.layer_combo = LayerPicker(single_band)
        add_row(form, "SAR layer", self.layer_combo, "A single-band SAR backscatter raster (e.g. Sentinel-1 VV)")
        self.band_combo = QgsRasterBandComboBox()
        self.band_combo.setLayer(self.layer_combo.currentLayer())
        self.layer_combo.layerChanged.connect(self.band_combo.setLayer)
        add_row(form, "Band", self.band_combo, "The band holding the backscatter")
        self.kind_combo = QComboBox()
        self.kind_combo.addItems(INPUT_KINDS)
        add_row(form, "Input values", self.kind_combo, "How the values are scaled, converted to dB for the model. "
                "auto: integer = amplitude, negative floats = dB, other floats = linear backscatter")
        self.land_combo = QgsMapLayerComboBox()
        self.land_combo.setFilters(QgsMapLayerProxyModel.Filter.PolygonLayer)
        self.land_combo.setAllowEmptyLayer(True)
        self.land_combo.setLayer(None)
        add_row(form, "Land mask (optional)", self.land_combo, "Polygons of land: pixels inside are classed land "
                "whatever the model says, so coasts raise no false slicks")
        self.model_picker = ModelPicker(TASK)
        add_row(form, "Model", self.model_picker)
        self.add_device_row(form)
        self.add_resample_row(form)
        self.add_raster_output_row(form, "Class raster")
        self.polygons_check = QCheckBox("Also write oil-slick polygons (GeoPackage)")
        self.polygons_check.setChecked(True)
        add_row(form, "", self.polygons_check, "One polygon per connected oil patch, with its area and mean oil "
                "probability")
        layout.addLayout(form)

    def make_task(self) -> CoreTask:
        layer = self.layer_combo.currentLayer()
        output = self.output_path("oilspill_", f"{layer.name() if layer else 'sar'}_oil.tif")
        land = self.land_combo.currentLayer()
        land_path, land_layer = vector_source(land) if land is not None else ("", "")
        params = OilSpillParams(
            input_path=raster_source(layer), output_path=output, model_dir=self.model_picker.path(),
            band=self.band_combo.currentBand() if self.band_combo.currentBand() > 0 else 1,
            input_kind=self.kind_combo.currentText(), land_mask_path=land_path, land_mask_layer=land_layer,
            polygons_path=f"{Path(output).with_suffix('')}_slicks.gpkg" if self.polygons_check.isChecked() else "",
            device=self.device_combo.currentText(), resample_to_model=self.resample_check.isChecked(),
            layer_name=layer.name())
        return CoreTask(f"Detect oil spills in {layer.name()}", detect_oil_spills, params)

    def on_success(self, result) -> None:
        name = Path(result.output_path).stem
        add_class_outputs(result.output_path, result.polygons_path, result.classes, name)
        slicks = f", {result.slicks} slick(s), {result.oil_area_km2:.3f} km² of oil" if result.polygons_path else ""
        self.write(f"Added '{name}' ({result.tiles} tiles{slicks}; {result.scaling}; {result.seconds:.1f} s on "
                   f"{result.device}).")

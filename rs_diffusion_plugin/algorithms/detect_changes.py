"""rsdiffusion:detect_changes — a change raster (+ change polygons) from two dates of one place (FC-Siam-conc)."""
from __future__ import annotations

from qgis.core import (QgsPalettedRasterRenderer, QgsProcessingOutputNumber,
                       QgsProcessingParameterNumber, QgsProcessingParameterRasterDestination,
                       QgsProcessingParameterRasterLayer, QgsProcessingParameterVectorDestination)
from qgis.PyQt.QtGui import QColor

from core.catalog import starter_model_dir
from rs_diffusion_plugin.algorithms.base import RsDiffusionAlgorithm, gpkg_path
from rs_diffusion_plugin.layers import style_polygon_layer

# core.change.fcsiam.TASK and core.data.change.CHANGE_CLASSES, without importing torch
from rs_diffusion_plugin.qgis_enums import INTEGER_NUMBER, POLYGON_SOURCE
TASK = "changedet"
CHANGE_CLASSES = [{"value": 0, "name": "no change", "color": "#000000"},
                  {"value": 1, "name": "change", "color": "#ff0000"}]
NO_CHANGE, CHANGE = CHANGE_CLASSES


class DetectChangesAlgorithm(RsDiffusionAlgorithm):
    NAME = "detect_changes"
    DISPLAY_NAME = "Detect changes (two dates)"
    GROUP = "Change detection"
    HELP = ("Finds what changed between two images of the same place (date A, the earlier, and date B) with an "
            "FC-Siam-conc change detector, tile by tile with blended probabilities. The change raster is on "
            "date A's grid: 1 change, 0 no change (shown transparent), nodata where either date is nodata. When "
            "date B is on another grid (size, pixel size, extent or CRS) it is resampled (bilinear) onto date "
            "A's grid first. Both dates need the model's bands (the first bands are read, in the card's order) "
            "and should share one value range. OUTPUT_POLYGONS: a GeoPackage of change polygons with their area "
            "(m², km²); OUTPUT_PROBABILITY: the change probability (0..1). Default model: the shipped starter "
            "change detector (trained on procedural scenes; train your own with `python -m training changedet`, "
            "e.g. on a folder written by 'Build change training set'). RESAMPLE_TO_MODEL (advanced): read date A "
            "at the model's ground resolution and date B onto that grid; the outputs are then on that grid.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT_A", self.tr("Date A (earlier) raster")))
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT_B", self.tr("Date B (later) raster")))
        self.add_model_parameter(str(starter_model_dir(TASK)), "Change detector directory (empty: starter model)")
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", self.tr("Changes")))
        self.addParameter(QgsProcessingParameterVectorDestination(
            "OUTPUT_POLYGONS", self.tr("Change polygons"), POLYGON_SOURCE,
            optional=True, createByDefault=False))
        self.addParameter(QgsProcessingParameterRasterDestination(
            "OUTPUT_PROBABILITY", self.tr("Change probability"), optional=True, createByDefault=False))
        self.add_advanced(QgsProcessingParameterNumber(
            "OVERLAP", self.tr("Tile overlap in pixels"), INTEGER_NUMBER,
            defaultValue=32, minValue=0, maxValue=1024))
        self.add_advanced(QgsProcessingParameterNumber(
            "BATCH_SIZE", self.tr("Tiles per batch"), INTEGER_NUMBER,
            defaultValue=4, minValue=1, maxValue=256))
        self.add_resample_parameter("the layers (date A's extent at the model's pixel size, date B resampled onto it)")
        self.add_device_parameter()
        self.addOutput(QgsProcessingOutputNumber("CHANGED_AREA_KM2", self.tr("Changed area (km²)")))
        self.addOutput(QgsProcessingOutputNumber("POLYGONS", self.tr("Change polygons written")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        from core.change.pipeline import ChangeParams, detect_changes
        from rs_diffusion_plugin.layers import raster_source
        layer_a = self.parameterAsRasterLayer(parameters, "INPUT_A", context)
        layer_b = self.parameterAsRasterLayer(parameters, "INPUT_B", context)

        def run(progress):
            params = ChangeParams(
                input_a_path=raster_source(layer_a), input_b_path=raster_source(layer_b),
                output_path=self.parameterAsOutputLayer(parameters, "OUTPUT", context),
                model_dir=self.parameterAsFile(parameters, "MODEL", context),
                polygons_path=gpkg_path(self.parameterAsOutputLayer(parameters, "OUTPUT_POLYGONS", context)),
                probability_path=self.parameterAsOutputLayer(parameters, "OUTPUT_PROBABILITY", context) or "",
                overlap=self.parameterAsInt(parameters, "OVERLAP", context),
                batch_size=self.parameterAsInt(parameters, "BATCH_SIZE", context),
                device=self.device(parameters, context),
                name_a=layer_a.name(), name_b=layer_b.name(),
                resample_to_model=self.parameterAsBool(parameters, "RESAMPLE_TO_MODEL", context))
            return detect_changes(params, progress)

        result = self.run_core(run, feedback)
        if result is None:
            return {}
        self.style_on_load(context, result.output_path, style_change_layer)
        outputs = {"OUTPUT": result.output_path, "CHANGED_AREA_KM2": result.changed_area_km2,
                   "POLYGONS": result.polygons}
        if result.polygons_path:
            self.style_on_load(context, result.polygons_path, style_change_polygons)
            outputs["OUTPUT_POLYGONS"] = result.polygons_path
        if result.probability_path:
            outputs["OUTPUT_PROBABILITY"] = result.probability_path
        return outputs


def style_change_layer(layer) -> None:
    """Change in red over a transparent "no change": the change raster lies over the date layers."""
    entries = [QgsPalettedRasterRenderer.Class(NO_CHANGE["value"], QColor(0, 0, 0, 0), NO_CHANGE["name"]),
               QgsPalettedRasterRenderer.Class(CHANGE["value"], QColor(CHANGE["color"]), CHANGE["name"])]
    layer.setRenderer(QgsPalettedRasterRenderer(layer.dataProvider(), 1, entries))
    layer.triggerRepaint()


def style_change_polygons(layer) -> None:
    """Change polygons in the change colour (they hold the change class only)."""
    style_polygon_layer(layer, [CHANGE])

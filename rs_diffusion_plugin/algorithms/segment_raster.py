"""rsdiffusion:segment_raster — class raster (+ probabilities, + polygons) from a raster layer."""
from __future__ import annotations

from qgis.core import (QgsProcessingParameterBand, QgsProcessingParameterNumber,
                       QgsProcessingParameterRasterDestination, QgsProcessingParameterRasterLayer,
                       QgsProcessingParameterVectorDestination)

from core.catalog import starter_model_dir
from rs_diffusion_plugin.algorithms.base import RsDiffusionAlgorithm, gpkg_path

TASK = "segmentation"


class SegmentRasterAlgorithm(RsDiffusionAlgorithm):
    NAME = "segment_raster"
    DISPLAY_NAME = "Segment raster"
    GROUP = "Segmentation"
    HELP = ("Classifies every pixel of a raster layer with a segmentation model (model.json + "
            "model.safetensors). Large rasters are processed tile by tile with overlapping, blended "
            "tiles; nodata stays nodata. Default model: the shipped starter model (bare soil, "
            "vegetation, water, road, building on 0.5 m RGB). RESAMPLE_TO_MODEL (advanced): read the layer at the "
            "model's ground resolution; the outputs are then on that grid.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", self.tr("Input raster")))
        self.add_model_parameter(str(starter_model_dir(TASK)))
        self.addParameter(QgsProcessingParameterBand(
            "BANDS", self.tr("Bands, in the model's order (empty: the first bands)"), parentLayerParameterName="INPUT",
            allowMultiple=True, optional=True))
        self.add_device_parameter()
        self.addParameter(QgsProcessingParameterNumber(
            "TILE_SIZE", self.tr("Tile size in pixels (0: the model's)"), INTEGER_NUMBER,
            defaultValue=0, minValue=0, maxValue=4096))
        self.addParameter(QgsProcessingParameterNumber(
            "OVERLAP", self.tr("Tile overlap in pixels"), INTEGER_NUMBER,
            defaultValue=32, minValue=0, maxValue=1024))
        self.addParameter(QgsProcessingParameterNumber(
            "BATCH_SIZE", self.tr("Tiles per batch"), INTEGER_NUMBER,
            defaultValue=4, minValue=1, maxValue=256))
        self.add_resample_parameter()
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", self.tr("Class raster")))
        self.addParameter(QgsProcessingParameterRasterDestination(
            "OUTPUT_PROBABILITIES", self.tr("Class probabilities"), optional=True, createByDefault=False))
        self.addParameter(QgsProcessingParameterVectorDestination(
            "OUTPUT_POLYGONS", self.tr("Class polygons"), POLYGON_SOURCE,
            optional=True, createByDefault=False))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        # torch & co. load on first use, not while QGIS starts
        from core.segmentation.pipeline import SegmentParams, segment_raster
        from rs_diffusion_plugin.layers import raster_source
        layer = self.parameterAsRasterLayer(parameters, "INPUT", context)

        def run(progress):
            params = SegmentParams(
                input_path=raster_source(layer),
                output_path=self.parameterAsOutputLayer(parameters, "OUTPUT", context),
                model_dir=self.parameterAsFile(parameters, "MODEL", context),
                bands=self.parameterAsInts(parameters, "BANDS", context) or None,
                device=self.device(parameters, context),
                tile_size=self.parameterAsInt(parameters, "TILE_SIZE", context),
                overlap=self.parameterAsInt(parameters, "OVERLAP", context),
                batch_size=self.parameterAsInt(parameters, "BATCH_SIZE", context),
                probabilities_path=self.parameterAsOutputLayer(parameters, "OUTPUT_PROBABILITIES", context) or "",
                polygons_path=gpkg_path(self.parameterAsOutputLayer(parameters, "OUTPUT_POLYGONS", context)),
                layer_name=layer.name(),
                resample_to_model=self.parameterAsBool(parameters, "RESAMPLE_TO_MODEL", context),
            )
            return segment_raster(params, progress)

        result = self.run_core(run, feedback)
        if result is None:
            return {}
        self.style_classes_on_load(context, result.output_path, result.classes)
        outputs = {"OUTPUT": result.output_path}
        if result.probabilities_path:
            outputs["OUTPUT_PROBABILITIES"] = result.probabilities_path
        if result.polygons_path:
            self.style_classes_on_load(context, result.polygons_path, result.classes, polygons=True)
            outputs["OUTPUT_POLYGONS"] = result.polygons_path
        return outputs
from rs_diffusion_plugin.qgis_enums import INTEGER_NUMBER, POLYGON_SOURCE


"""rsdiffusion:detect_oil_spills — oil class raster + oil-slick polygons from a SAR layer (SAROSS-Net)."""
from __future__ import annotations

from qgis.core import (QgsProcessingOutputNumber, QgsProcessingParameterBand,
                       QgsProcessingParameterEnum, QgsProcessingParameterNumber,
                       QgsProcessingParameterRasterDestination, QgsProcessingParameterRasterLayer,
                       QgsProcessingParameterVectorDestination, QgsProcessingParameterVectorLayer)

from core.catalog import starter_model_dir
from rs_diffusion_plugin.algorithms.base import RsDiffusionAlgorithm, gpkg_path

INPUT_KINDS = ("auto", "linear", "db", "amplitude")   # core.data.sar_scaling.INPUT_KINDS, without importing numpy


class DetectOilSpillsAlgorithm(RsDiffusionAlgorithm):
    NAME = "detect_oil_spills"
    DISPLAY_NAME = "Detect oil spills (SAR)"
    GROUP = "SAR oil spills"
    HELP = ("Segments a SAR layer (Sentinel-1, ALOS...; float linear backscatter, dB, or 8/16-bit amplitude) "
            "into the model's classes (sea, oil, look-alike, ship, land; or sea / oil for binary models) with a "
            "SAROSS-Net model, tile by tile with blended probabilities; nodata stays nodata. The input kind is "
            "detected from the data (advanced: force it); linear values are converted to dB, then stretched "
            "between percentiles of the whole scene as the model card says. An optional land-mask polygon "
            "layer marks land: no oil is ever detected there. OUTPUT_POLYGONS: a GeoPackage of oil-slick "
            "polygons with area (m², km²) and mean oil probability. Default model: the shipped starter model "
            "(trained on procedural SAR scenes; train your own with `python -m training saross`). "
            "RESAMPLE_TO_MODEL (advanced): read the layer at the model's ground resolution (when its card records "
            "one); the outputs are then on that grid.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", self.tr("SAR raster")))
        self.add_model_parameter(str(starter_model_dir("saross")),
                                 "SAROSS-Net model directory (empty: starter model)")
        self.addParameter(QgsProcessingParameterVectorLayer(
            "LAND_MASK", self.tr("Land mask (polygons)"), [POLYGON_SOURCE], optional=True))
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", self.tr("Oil-spill classes")))
        self.addParameter(QgsProcessingParameterVectorDestination(
            "OUTPUT_POLYGONS", self.tr("Oil-slick polygons"), POLYGON_SOURCE,
            optional=True, createByDefault=True))
        self.addParameter(QgsProcessingParameterRasterDestination(
            "OUTPUT_PROBABILITY", self.tr("Oil probability"), optional=True, createByDefault=False))
        self.add_advanced(QgsProcessingParameterBand(   # optional: QGIS 3.22 rejects a left-out band, default or not
            "BAND", self.tr("SAR band (e.g. VV)"), defaultValue=1, parentLayerParameterName="INPUT", optional=True))
        self.add_advanced(QgsProcessingParameterEnum(
            "INPUT_KIND", self.tr("Input values"), options=list(INPUT_KINDS), defaultValue="auto",
            usesStaticStrings=True))
        self.add_advanced(QgsProcessingParameterNumber(
            "OVERLAP", self.tr("Tile overlap in pixels"), INTEGER_NUMBER,
            defaultValue=64, minValue=0, maxValue=1024))
        self.add_advanced(QgsProcessingParameterNumber(
            "BATCH_SIZE", self.tr("Tiles per batch"), INTEGER_NUMBER,
            defaultValue=4, minValue=1, maxValue=256))
        self.add_resample_parameter()
        self.add_device_parameter()
        self.addOutput(QgsProcessingOutputNumber("OIL_AREA_KM2", self.tr("Oil area (km²)")))
        self.addOutput(QgsProcessingOutputNumber("SLICKS", self.tr("Oil-slick polygons")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        from core.oilspill.pipeline import OilSpillParams, detect_oil_spills
        from rs_diffusion_plugin.layers import raster_source, vector_source
        layer = self.parameterAsRasterLayer(parameters, "INPUT", context)
        land = self.parameterAsVectorLayer(parameters, "LAND_MASK", context)

        def run(progress):
            land_path, land_layer = vector_source(land) if land is not None else ("", "")
            params = OilSpillParams(
                input_path=raster_source(layer),
                output_path=self.parameterAsOutputLayer(parameters, "OUTPUT", context),
                model_dir=self.parameterAsFile(parameters, "MODEL", context),
                band=self.parameterAsInt(parameters, "BAND", context) or 1,
                input_kind=self.parameterAsEnumString(parameters, "INPUT_KIND", context),
                land_mask_path=land_path, land_mask_layer=land_layer,
                polygons_path=gpkg_path(self.parameterAsOutputLayer(parameters, "OUTPUT_POLYGONS", context)),
                probability_path=self.parameterAsOutputLayer(parameters, "OUTPUT_PROBABILITY", context) or "",
                overlap=self.parameterAsInt(parameters, "OVERLAP", context),
                batch_size=self.parameterAsInt(parameters, "BATCH_SIZE", context),
                device=self.device(parameters, context),
                layer_name=layer.name(),
                resample_to_model=self.parameterAsBool(parameters, "RESAMPLE_TO_MODEL", context))
            return detect_oil_spills(params, progress)

        result = self.run_core(run, feedback)
        if result is None:
            return {}
        self.style_classes_on_load(context, result.output_path, result.classes)
        outputs = {"OUTPUT": result.output_path, "OIL_AREA_KM2": result.oil_area_km2, "SLICKS": result.slicks}
        if result.polygons_path:
            self.style_classes_on_load(context, result.polygons_path, result.classes, polygons=True)
            outputs["OUTPUT_POLYGONS"] = result.polygons_path
        if result.probability_path:
            outputs["OUTPUT_PROBABILITY"] = result.probability_path
        return outputs
from rs_diffusion_plugin.qgis_enums import INTEGER_NUMBER, POLYGON_SOURCE

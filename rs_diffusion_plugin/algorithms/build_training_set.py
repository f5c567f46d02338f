"""rsdiffusion:build_training_set — image + labels -> aligned patches in the folder dataset format."""
from __future__ import annotations

from qgis.core import (QgsProcessingOutputNumber, QgsProcessingParameterField, QgsProcessingParameterFolderDestination,
                       QgsProcessingParameterMapLayer, QgsProcessingParameterNumber,
                       QgsProcessingParameterRasterLayer, QgsRasterLayer)

from rs_diffusion_plugin.algorithms.base import RsDiffusionAlgorithm


class BuildTrainingSetAlgorithm(RsDiffusionAlgorithm):
    NAME = "build_training_set"
    DISPLAY_NAME = "Build training set"
    GROUP = "Training data"
    HELP = ("Cuts an image layer and a label layer into aligned patches (images/, masks/, classes.json): "
            "the folder format every rs-diffusion trainer reads. Labels are a class raster (resampled onto "
            "the image grid with nearest neighbour if needed) or polygons with a class field (rasterised; "
            "outside every polygon = 0, background). Patches with more nodata than allowed are skipped.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", self.tr("Image")))
        self.addParameter(QgsProcessingParameterMapLayer("LABELS", self.tr("Labels (class raster or polygons)")))
        self.addParameter(QgsProcessingParameterField(
            "CLASS_FIELD", self.tr("Class field (polygons)"), parentLayerParameterName="LABELS", optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            "PATCH_SIZE", self.tr("Patch size (pixels)"), INTEGER_NUMBER, 256, minValue=16))
        self.addParameter(QgsProcessingParameterNumber(
            "STRIDE", self.tr("Stride (pixels)"), INTEGER_NUMBER, 256, minValue=1))
        self.addParameter(QgsProcessingParameterNumber(
            "MAX_NODATA", self.tr("Largest share of nodata/unlabelled pixels in a patch (%)"),
            DOUBLE_NUMBER, 0.0, minValue=0.0, maxValue=100.0))
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT_FOLDER", self.tr("Dataset folder")))
        self.addOutput(QgsProcessingOutputNumber("PATCHES", self.tr("Patch pairs written")))
        self.addOutput(QgsProcessingOutputNumber("SKIPPED", self.tr("Patches skipped for nodata")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        from core.data.training_set import TrainingSetParams, build_training_set
        from rs_diffusion_plugin.layers import raster_source, vector_source
        image = self.parameterAsRasterLayer(parameters, "INPUT", context)
        labels = self.parameterAsLayer(parameters, "LABELS", context)

        def run(progress):
            if isinstance(labels, QgsRasterLayer):
                labels_path, labels_layer = raster_source(labels), ""
            else:
                labels_path, labels_layer = vector_source(labels)
            params = TrainingSetParams(
                image_path=raster_source(image), labels_path=labels_path, labels_layer=labels_layer,
                output_dir=self.parameterAsString(parameters, "OUTPUT_FOLDER", context),
                patch_size=self.parameterAsInt(parameters, "PATCH_SIZE", context),
                stride=self.parameterAsInt(parameters, "STRIDE", context),
                class_field=self.parameterAsString(parameters, "CLASS_FIELD", context) or "",
                max_nodata_fraction=self.parameterAsDouble(parameters, "MAX_NODATA", context) / 100.0)
            return build_training_set(params, progress)

        result = self.run_core(run, feedback)
        if result is None:
            return {}
        return {"OUTPUT_FOLDER": result.output_dir, "PATCHES": result.patches, "SKIPPED": result.skipped}
from rs_diffusion_plugin.qgis_enums import DOUBLE_NUMBER, INTEGER_NUMBER

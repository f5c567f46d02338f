"""rsdiffusion:build_change_training_set — two dates + their changes -> aligned A/, B/, label/ patches."""
from __future__ import annotations

from qgis.core import (QgsProcessingOutputNumber, QgsProcessingParameterFolderDestination,
                       QgsProcessingParameterMapLayer, QgsProcessingParameterNumber,
                       QgsProcessingParameterRasterLayer, QgsRasterLayer)

from rs_diffusion_plugin.algorithms.base import RsDiffusionAlgorithm
from rs_diffusion_plugin.qgis_enums import (DOUBLE_NUMBER, INTEGER_NUMBER, POLYGON_GEOMETRY, POLYGON_SOURCE,
                                            RASTER_SOURCE)


class BuildChangeTrainingSetAlgorithm(RsDiffusionAlgorithm):
    NAME = "build_change_training_set"
    DISPLAY_NAME = "Build change training set"
    GROUP = "Change detection"
    HELP = ("Cuts two images of the same place (date A and date B) and what changed between them into aligned "
            "patches: A/, B/ and label/ with the same file names, the change folder layout that "
            "`python -m training changedet` (and LEVIR-CD, DSIFN, ChangeFormer) read. Both dates need the same "
            "bands; date B is resampled (bilinear) onto date A's grid when the grids differ. Changes are a "
            "raster (0/1, or 0/255: 128 and above is change; resampled with nearest neighbour if needed) or a "
            "polygon layer (every polygon is change, everything else no change). Label patches hold 0 no "
            "change, 1 change, 255 nodata. Patches with a larger share of nodata than allowed are skipped.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT_A", self.tr("Date A (earlier) raster")))
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT_B", self.tr("Date B (later) raster")))
        self.addParameter(QgsProcessingParameterMapLayer(
            "CHANGES", self.tr("Changes (0/1 or 0/255 raster, or change polygons)"),
            types=[RASTER_SOURCE, POLYGON_SOURCE]))
        self.addParameter(QgsProcessingParameterNumber(
            "PATCH_SIZE", self.tr("Patch size (pixels)"), INTEGER_NUMBER, 256, minValue=16))
        self.addParameter(QgsProcessingParameterNumber(
            "STRIDE", self.tr("Stride (pixels)"), INTEGER_NUMBER, 256, minValue=1))
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT_FOLDER", self.tr("Change dataset folder")))
        self.add_advanced(QgsProcessingParameterNumber(
            "MAX_NODATA_FRACTION", self.tr("Largest share of nodata pixels in a patch (0..1)"),
            DOUBLE_NUMBER, 0.0, minValue=0.0, maxValue=1.0))
        self.addOutput(QgsProcessingOutputNumber("PATCHES", self.tr("Patch triplets written")))
        self.addOutput(QgsProcessingOutputNumber("SKIPPED", self.tr("Patches skipped for nodata")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        from core.data.training_set import ChangeTrainingSetParams, build_change_training_set
        from rs_diffusion_plugin.layers import raster_source, vector_source
        layer_a = self.parameterAsRasterLayer(parameters, "INPUT_A", context)
        layer_b = self.parameterAsRasterLayer(parameters, "INPUT_B", context)
        changes = self.parameterAsLayer(parameters, "CHANGES", context)

        def run(progress):
            if isinstance(changes, QgsRasterLayer):
                changes_path, changes_layer = raster_source(changes), ""
            else:
                changes_path, changes_layer = vector_source(changes)
                if changes.geometryType() != POLYGON_GEOMETRY:
                    raise ValueError(f"Layer '{changes.name()}' does not hold polygons: changes are polygons (each "
                                     "one a change) or a 0/1 or 0/255 change raster.")
            params = ChangeTrainingSetParams(
                image_a_path=raster_source(layer_a), image_b_path=raster_source(layer_b),
                changes_path=changes_path, changes_layer=changes_layer,
                output_dir=self.parameterAsString(parameters, "OUTPUT_FOLDER", context),
                patch_size=self.parameterAsInt(parameters, "PATCH_SIZE", context),
                stride=self.parameterAsInt(parameters, "STRIDE", context),
                max_nodata_fraction=self.parameterAsDouble(parameters, "MAX_NODATA_FRACTION", context))
            return build_change_training_set(params, progress)

        result = self.run_core(run, feedback)
        if result is None:
            return {}
        return {"OUTPUT_FOLDER": result.output_dir, "PATCHES": result.patches, "SKIPPED": result.skipped}

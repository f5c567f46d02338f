"""rsdiffusion:train_oil_spill_detector — a SAR layer and its labels -> a fine-tuned SAROSS-Net."""
from __future__ import annotations

from qgis.core import (QgsProcessingParameterBand, QgsProcessingParameterFile, QgsProcessingParameterRasterLayer,
                       QgsProcessingParameterVectorLayer)

from rs_diffusion_plugin.algorithms.train_common import FIT_HELP, TrainAlgorithm
from rs_diffusion_plugin.qgis_enums import FOLDER, POLYGON_SOURCE


class TrainOilSpillDetectorAlgorithm(TrainAlgorithm):
    NAME = "train_oil_spill_detector"
    DISPLAY_NAME = "Train oil-spill detector on your SAR layers"
    TASK = "oilspill"
    HELP = ("Fits a SAROSS-Net oil-spill model to a SAR layer (linear, dB or amplitude; stretched over the whole "
            "scene as detect_oil_spills does) and labels for part of it: a class raster whose values are the base "
            "model's (starter: 0 sea, 1 oil, 2 look-alike, 3 ship, 4 land), or polygons with a class field "
            "(values or names such as sea / oil). The new model has exactly your classes: a starter class you "
            "do not label (e.g. land) is dropped. Optional: a land mask (left out of training) and a folder of "
            "generated pairs with soft labels (DAKD, from synthesize_sar_pairs)." + FIT_HELP)

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", self.tr("SAR raster")))
        self.add_labels_parameters("Labels (class raster or polygons)")
        self.add_fit_parameters()
        self.add_advanced(QgsProcessingParameterBand(
            "BAND", self.tr("SAR band (e.g. VV)"), defaultValue=1, parentLayerParameterName="INPUT", optional=True))
        self.add_advanced(QgsProcessingParameterVectorLayer(
            "LAND_MASK", self.tr("Land mask (polygons, left out of training)"), [POLYGON_SOURCE], optional=True))
        self.add_advanced(QgsProcessingParameterFile(
            "SYNTHETIC", self.tr("Generated pairs with soft labels (DAKD)"), behavior=FOLDER, optional=True))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        from rs_diffusion_plugin.layers import raster_source, vector_source
        image = self.parameterAsRasterLayer(parameters, "INPUT", context)
        land = self.parameterAsVectorLayer(parameters, "LAND_MASK", context)

        def layers():
            land_path, land_layer = vector_source(land) if land is not None else ("", "")
            return {"image_path": raster_source(image), **self.labels_source(parameters, context),
                    "band": self.parameterAsInt(parameters, "BAND", context) or 1, "land_mask_path": land_path,
                    "land_mask_layer": land_layer,
                    "synthetic": self.parameterAsFile(parameters, "SYNTHETIC", context) or ""}

        return self.fit(parameters, context, feedback, layers)

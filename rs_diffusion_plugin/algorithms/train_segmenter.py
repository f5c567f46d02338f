"""rsdiffusion:train_segmenter — an image and its labels (class raster or polygons) -> a fine-tuned segmenter."""
from __future__ import annotations

from qgis.core import QgsProcessingParameterRasterLayer

from rs_diffusion_plugin.algorithms.train_common import FIT_HELP, TrainAlgorithm


class TrainSegmenterAlgorithm(TrainAlgorithm):
    NAME = "train_segmenter"
    DISPLAY_NAME = "Train segmenter on your layers"
    TASK = "segmentation"
    HELP = ("Fits a segmentation model to an image layer (any band count and data type) and labels drawn or "
            "loaded for part of it: a class raster (values = the base model's class values, other values are "
            "new classes) or polygons with a class field (class values, or names: names the base model knows "
            "keep its output; pixels outside every polygon are unlabelled)." + FIT_HELP)

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", self.tr("Image")))
        self.add_labels_parameters("Labels (class raster or polygons)")
        self.add_fit_parameters()

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        from rs_diffusion_plugin.layers import raster_source
        image = self.parameterAsRasterLayer(parameters, "INPUT", context)
        return self.fit(parameters, context, feedback, lambda: {
            "image_path": raster_source(image), **self.labels_source(parameters, context)})

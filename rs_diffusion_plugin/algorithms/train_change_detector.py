"""rsdiffusion:train_change_detector — two dates and their changes -> a fine-tuned FC-Siam-conc."""
from __future__ import annotations

from qgis.core import QgsProcessingParameterRasterLayer

from rs_diffusion_plugin.algorithms.train_common import FIT_HELP, TrainAlgorithm


class TrainChangeDetectorAlgorithm(TrainAlgorithm):
    NAME = "train_change_detector"
    DISPLAY_NAME = "Train change detector on your layers"
    TASK = "change"
    HELP = ("Fits a change-detection model to two images of the same place (date B is resampled onto date A's "
            "grid when the grids differ, as detect_changes does; both dates are stretched alike) and what "
            "changed: a 0/1 or 0/255 change raster, or polygons (each one a change, everything else no "
            "change)." + FIT_HELP)

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT_A", self.tr("Date A (earlier) raster")))
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT_B", self.tr("Date B (later) raster")))
        self.add_labels_parameters("Changes (0/1 or 0/255 raster, or change polygons)", class_field=False)
        self.add_fit_parameters(encoder=False)

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        from rs_diffusion_plugin.layers import raster_source
        image_a = self.parameterAsRasterLayer(parameters, "INPUT_A", context)
        image_b = self.parameterAsRasterLayer(parameters, "INPUT_B", context)
        return self.fit(parameters, context, feedback, lambda: {
            "image_path": raster_source(image_a), "image_b_path": raster_source(image_b),
            **self.labels_source(parameters, context, field=False)})

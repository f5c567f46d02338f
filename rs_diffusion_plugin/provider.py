"""The `rsdiffusion` Processing provider."""
from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from core.catalog import RESOURCES_DIR
from rs_diffusion_plugin.algorithms import ALGORITHMS

ICON = RESOURCES_DIR / "icons" / "rs_diffusion.svg"


class RsDiffusionProvider(QgsProcessingProvider):
    def id(self):
        return "rsdiffusion"

    def name(self):
        return "rs-diffusion"

    def longName(self):  # noqa: N802
        return "rs-diffusion: diffusion methods for remote sensing"

    def icon(self):
        return QIcon(str(ICON))

    def loadAlgorithms(self):  # noqa: N802
        for algorithm in ALGORITHMS:
            self.addAlgorithm(algorithm())

    def supportedOutputRasterLayerExtensions(self):  # noqa: N802
        return ["tif"]

    def supportedOutputVectorLayerExtensions(self):  # noqa: N802
        return ["gpkg"]

"""rsdiffusion:synthesize_change_pairs — generated (date A, date B, change mask) triplets from RDF-MIG."""
from __future__ import annotations

from qgis.core import (QgsProcessingOutputFile, QgsProcessingOutputNumber, QgsProcessingParameterFolderDestination,
                       QgsProcessingParameterNumber)

from core.catalog import starter_model_dir
from rs_diffusion_plugin.algorithms.base import RsDiffusionAlgorithm

TASK = "rdfmig"   # core.change.rdfmig.TASK, without importing torch


class SynthesizeChangePairsAlgorithm(RsDiffusionAlgorithm):
    NAME = "synthesize_change_pairs"
    DISPLAY_NAME = "Synthesize change pairs (RDF-MIG)"
    GROUP = "Change detection"
    HELP = ("Generates new change-detection training triplets - an image at date A, an image at date B and "
            "the mask of what changed between them - with an RDF-MIG joint diffusion model (DDIM sampling). "
            "Output folder: A/, B/ and label/ (0 no change, 1 change) with the same file names, the change "
            "folder layout the change trainer reads (`python -m training changedet --synthetic FOLDER` mixes "
            "them with real pairs), plus index.csv and preview.png (rows: A | B | mask). Images have the "
            "training data's bands, value range and data type. Generated triplets have no location: their "
            "GeoTIFFs carry no CRS.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_model_parameter(str(starter_model_dir(TASK)), "RDF-MIG model directory (empty: starter model)")
        self.addParameter(QgsProcessingParameterNumber(
            "COUNT", self.tr("Number of triplets"), INTEGER_NUMBER,
            defaultValue=16, minValue=1, maxValue=100000))
        self.addParameter(QgsProcessingParameterNumber(
            "STEPS", self.tr("DDIM steps"), INTEGER_NUMBER,
            defaultValue=50, minValue=1, maxValue=1000))
        self.addParameter(QgsProcessingParameterNumber(
            "SEED", self.tr("Random seed"), INTEGER_NUMBER, defaultValue=0, minValue=0))
        self.addParameter(QgsProcessingParameterFolderDestination(
            "OUTPUT_FOLDER", self.tr("Output folder (new or empty)")))
        self.add_advanced(QgsProcessingParameterNumber(
            "BATCH_SIZE", self.tr("Triplets per batch"), INTEGER_NUMBER,
            defaultValue=8, minValue=1, maxValue=256))
        self.add_device_parameter()
        self.addOutput(QgsProcessingOutputFile("INDEX", self.tr("Index of the generated triplets (CSV)")))
        self.addOutput(QgsProcessingOutputFile("PREVIEW", self.tr("Preview grid (PNG)")))
        self.addOutput(QgsProcessingOutputNumber("TRIPLETS", self.tr("Triplets written")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        from core.change.generate import ChangeSynthesisParams, synthesize_change_pairs

        def run(progress):
            params = ChangeSynthesisParams(**self.generation_values(parameters, context))
            return synthesize_change_pairs(params, progress)

        result = self.run_core(run, feedback)
        if result is None:
            return {}
        return {"OUTPUT_FOLDER": result.output_dir, "INDEX": result.index_path, "PREVIEW": result.preview_path,
                "TRIPLETS": len(result.triplets)}
from rs_diffusion_plugin.qgis_enums import INTEGER_NUMBER

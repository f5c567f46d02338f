"""rsdiffusion:synthesize_pairs — new image/mask training pairs from a SatSynth model."""
from __future__ import annotations

from qgis.core import (QgsProcessingParameterBoolean, QgsProcessingParameterEnum, QgsProcessingParameterFile,
                       QgsProcessingParameterNumber)

from core.catalog import starter_model_dir
from rs_diffusion_plugin.algorithms.base import RsDiffusionAlgorithm

SAMPLERS = ("ddpm", "ddim")   # the option strings are the values (SAMPLER=ddim)


class SynthesizePairsAlgorithm(RsDiffusionAlgorithm):
    NAME = "synthesize_pairs"
    DISPLAY_NAME = "Synthesize image/mask pairs (SatSynth)"
    GROUP = "Synthesis"
    HELP = ("Generates new image + class mask pairs with a SatSynth joint diffusion model, to enlarge a "
            "segmentation training set. Sampler: DDPM runs the paper's 1000 steps; DDIM runs STEPS steps "
            "(50 is a good default, about 20x faster; advanced ETA: 1 adds fresh noise at every step, which "
            "gives better pairs from small models, 0 makes DDIM deterministic). SR adds the x2 super-resolution "
            "stage. Output: a "
            "dataset folder (images/, masks/, classes.json) that the trainers read, an index.csv with one "
            "row per pair, and preview.png. Generated pairs have no location: their GeoTIFFs carry no CRS.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_model_parameter(str(starter_model_dir("satsynth")),
                                 "SatSynth model directory (empty: starter model)")
        self.add_generation_parameters()
        self.addParameter(QgsProcessingParameterEnum(
            "SAMPLER", self.tr("Sampler"), options=list(SAMPLERS), defaultValue="ddim", usesStaticStrings=True))
        self.addParameter(QgsProcessingParameterNumber(
            "STEPS", self.tr("DDIM steps"), INTEGER_NUMBER,
            defaultValue=50, minValue=1, maxValue=1000))
        self.add_advanced(QgsProcessingParameterNumber(
            "ETA", self.tr("DDIM eta (1: fresh noise each step, better pairs; 0: deterministic)"),
            DOUBLE_NUMBER, defaultValue=1.0, minValue=0.0, maxValue=1.0))
        self.addParameter(QgsProcessingParameterBoolean(
            "SR", self.tr("x2 super-resolution stage"), defaultValue=False))
        self.addParameter(QgsProcessingParameterFile(
            "SR_MODEL", self.tr("Super-resolution model directory (empty: starter x2 model)"),
            behavior=FOLDER, optional=True))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        from core.synthesis.generate import SynthesisParams, synthesize_pairs

        def run(progress):
            params = SynthesisParams(
                **self.generation_values(parameters, context),
                sampler=self.parameterAsEnumString(parameters, "SAMPLER", context),
                eta=self.parameterAsDouble(parameters, "ETA", context),
                super_resolution=self.parameterAsBool(parameters, "SR", context),
                sr_model_dir=self.parameterAsFile(parameters, "SR_MODEL", context))
            return synthesize_pairs(params, progress)

        return self.generation_outputs(self.run_core(run, feedback))
from rs_diffusion_plugin.qgis_enums import DOUBLE_NUMBER, FOLDER, INTEGER_NUMBER

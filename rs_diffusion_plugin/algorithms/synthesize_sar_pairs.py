"""rsdiffusion:synthesize_sar_pairs — SAR image / label / soft-label training pairs from SAR-JointNet."""
from __future__ import annotations

from qgis.core import QgsProcessingParameterNumber

from core.catalog import starter_model_dir
from rs_diffusion_plugin.algorithms.base import RsDiffusionAlgorithm


class SynthesizeSarPairsAlgorithm(RsDiffusionAlgorithm):
    NAME = "synthesize_sar_pairs"
    DISPLAY_NAME = "Synthesize SAR oil-spill pairs (SAR-JointNet)"
    GROUP = "SAR oil spills"
    HELP = ("Generates new SAR images with their oil-spill labels using a SAR-JointNet joint diffusion model "
            "(DDIM, the paper's 200 steps by default). Output folder: images/ (8-bit amplitude), masks/ (class "
            "values), soft/ (the model's per-class probabilities, used to distil knowledge into SAROSS-Net: "
            "`python -m training saross --synthetic FOLDER`), classes.json, index.csv and preview.png. "
            "Generated pairs have no location: their GeoTIFFs carry no CRS.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_model_parameter(str(starter_model_dir("sar-jointnet")),
                                 "SAR-JointNet model directory (empty: starter model)")
        self.add_generation_parameters()
        self.addParameter(QgsProcessingParameterNumber(
            "STEPS", self.tr("DDIM steps"), INTEGER_NUMBER,
            defaultValue=200, minValue=1, maxValue=1000))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        from core.oilspill.generate import SarSynthesisParams, synthesize_sar_pairs

        def run(progress):
            return synthesize_sar_pairs(SarSynthesisParams(**self.generation_values(parameters, context)), progress)

        return self.generation_outputs(self.run_core(run, feedback))
from rs_diffusion_plugin.qgis_enums import INTEGER_NUMBER

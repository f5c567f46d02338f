"""rsdiffusion:filter_sar_pairs — keep the generated SAR pairs whose labels a real-data model agrees with best."""
from __future__ import annotations

from qgis.core import (QgsProcessingOutputNumber, QgsProcessingParameterFile, QgsProcessingParameterFolderDestination,
                       QgsProcessingParameterNumber)

from rs_diffusion_plugin.algorithms.base import RsDiffusionAlgorithm
from rs_diffusion_plugin.qgis_enums import DOUBLE_NUMBER, FOLDER


class FilterSarPairsAlgorithm(RsDiffusionAlgorithm):
    NAME = "filter_sar_pairs"
    DISPLAY_NAME = "Keep consistent SAR pairs"
    GROUP = "SAR oil spills"
    HELP = ("Scores every generated pair of a 'Synthesize SAR oil-spill pairs' folder with a SAROSS-Net trained on "
            "real data only (its prediction on the generated image against the generated label, mIoU) and copies "
            "the best-agreeing share into a new folder (images/, masks/, soft/, classes.json), ready for "
            "`python -m training saross --synthetic FOLDER`. Pairs whose labels do not follow their images teach a "
            "detector the wrong thing. Use a model trained without generated data as the judge, not the starter "
            "(it was trained with generated pairs).")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile(
            "MODEL", self.tr("SAROSS-Net model trained on real data only (the judge)"), behavior=FOLDER))
        self.addParameter(QgsProcessingParameterFile(
            "PAIRS", self.tr("Generated pairs folder"), behavior=FOLDER))
        self.addParameter(QgsProcessingParameterNumber(
            "KEEP", self.tr("Share of the pairs to keep"), DOUBLE_NUMBER, defaultValue=0.5, minValue=0.01,
            maxValue=1.0))
        self.add_device_parameter()
        self.addParameter(QgsProcessingParameterFolderDestination(
            "OUTPUT_FOLDER", self.tr("Output folder (new or empty)")))
        self.addOutput(QgsProcessingOutputNumber("PAIRS", self.tr("Pairs scored")))
        self.addOutput(QgsProcessingOutputNumber("KEPT", self.tr("Pairs kept")))
        self.addOutput(QgsProcessingOutputNumber("MIOU_ALL", self.tr("Mean agreement (mIoU), all pairs")))
        self.addOutput(QgsProcessingOutputNumber("MIOU_KEPT", self.tr("Mean agreement (mIoU), kept pairs")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        from training.sar import filter_consistent_pairs
        output = self.parameterAsString(parameters, "OUTPUT_FOLDER", context)

        def run(progress):
            return filter_consistent_pairs(
                self.parameterAsFile(parameters, "MODEL", context), self.parameterAsFile(parameters, "PAIRS", context),
                output, self.parameterAsDouble(parameters, "KEEP", context), self.device(parameters, context),
                progress)

        result = self.run_core(run, feedback)
        if result is None:
            return {}
        feedback.pushInfo(f"Kept {result['kept']} of {result['pairs']} pairs (agreement >= {result['threshold']:.3f}; "
                          f"mean {result['miou_all']:.3f} over all, {result['miou_kept']:.3f} kept).")
        return {"OUTPUT_FOLDER": output, "PAIRS": result["pairs"], "KEPT": result["kept"],
                "MIOU_ALL": result["miou_all"], "MIOU_KEPT": result["miou_kept"]}

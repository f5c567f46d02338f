"""rsdiffusion:export_onnx — a segmenter, SAROSS-Net or FC-Siam-conc model folder as one .onnx file (Deepness)."""
from __future__ import annotations

from qgis.core import QgsProcessingOutputNumber, QgsProcessingParameterFileDestination, QgsProcessingParameterNumber

from core.catalog import starter_model_dir
from rs_diffusion_plugin.algorithms.base import RsDiffusionAlgorithm
from rs_diffusion_plugin.qgis_enums import INTEGER_NUMBER


class ExportOnnxAlgorithm(RsDiffusionAlgorithm):
    NAME = "export_onnx"
    DISPLAY_NAME = "Export model to ONNX"
    GROUP = "Models"
    HELP = ("Writes a segmentation, oil-spill (SAROSS-Net) or change-detection (FC-Siam-conc) model as one ONNX "
            "file that the Deepness plugin and ONNX Runtime run: class probabilities out, any batch size, with "
            "Deepness's metadata (model type, class names, resolution, tile size and overlap, normalisation). "
            "A change model reads one raster with date A's bands followed by date B's. Needs the Python packages "
            "onnx and onnxruntime.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_model_parameter(str(starter_model_dir("segmentation")))
        self.addParameter(QgsProcessingParameterNumber(
            "OVERLAP_PERCENT", self.tr("Tile overlap proposed to Deepness (percent of the tile)"), INTEGER_NUMBER,
            defaultValue=15, minValue=0, maxValue=99))
        self.addParameter(QgsProcessingParameterFileDestination(
            "OUTPUT", self.tr("ONNX file"), fileFilter="ONNX models (*.onnx)"))
        self.addOutput(QgsProcessingOutputNumber("MAX_ABS_DIFFERENCE",
                                                 self.tr("Largest ONNX Runtime - torch probability difference")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        # torch & co. load on first use, not while QGIS starts
        from core.change.pipeline import load_changedet
        from core.checkpoint import ModelError, load_card
        from core.oilspill.pipeline import load_saross
        from core.onnx_export import export_onnx
        from core.segmentation.model import load_segmenter
        loaders = {"segmentation": load_segmenter, "saross": load_saross, "changedet": load_changedet}

        def run(progress):
            model_dir = self.parameterAsFile(parameters, "MODEL", context) or str(starter_model_dir("segmentation"))
            task = load_card(model_dir).task
            if task not in loaders:
                raise ModelError(f"'{model_dir}' is a '{task}' model; ONNX export takes {', '.join(loaders)} models.")
            model, card = loaders[task](model_dir)
            return export_onnx(model, card, self.parameterAsFileOutput(parameters, "OUTPUT", context),
                               self.parameterAsInt(parameters, "OVERLAP_PERCENT", context))

        result = self.run_core(run, feedback)
        if result is None:
            return {}
        feedback.pushInfo(f"ONNX Runtime matches torch within {result.max_abs_difference:.1e}.")
        return {"OUTPUT": result.path, "MAX_ABS_DIFFERENCE": result.max_abs_difference}

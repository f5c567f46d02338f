"""What every rs-diffusion Processing algorithm shares: naming, model and device parameters,
error translation and output styling."""
from __future__ import annotations

from qgis.core import (QgsProcessingAlgorithm, QgsProcessingException, QgsProcessingLayerPostProcessorInterface,
                       QgsProcessingOutputFile, QgsProcessingOutputNumber, QgsProcessingParameterBoolean,
                       QgsProcessingParameterDefinition,
                       QgsProcessingParameterEnum, QgsProcessingParameterFile, QgsProcessingParameterFolderDestination,
                       QgsProcessingParameterNumber)
from qgis.PyQt.QtCore import QCoreApplication

from core.catalog import DEVICE_CHOICES
from rs_diffusion_plugin.layers import style_class_layer, style_polygon_layer
from rs_diffusion_plugin.qgis_enums import ADVANCED, FOLDER, INTEGER_NUMBER


class RsDiffusionAlgorithm(QgsProcessingAlgorithm):
    NAME = ""
    DISPLAY_NAME = ""
    GROUP = ""
    HELP = ""

    def name(self):
        return self.NAME

    def displayName(self):  # noqa: N802
        return self.tr(self.DISPLAY_NAME)

    def group(self):
        return self.tr(self.GROUP)

    def groupId(self):  # noqa: N802
        return self.GROUP.lower().replace(" ", "_")

    def shortHelpString(self):  # noqa: N802
        return self.tr(self.HELP)

    def createInstance(self):  # noqa: N802
        return type(self)()

    def tr(self, text):
        return QCoreApplication.translate("rsdiffusion", text)

    def add_model_parameter(self, default_dir: str,
                            description: str = "Model directory (model.json + model.safetensors; empty: starter model)"):
        # Optional so that leaving it out (qgis_process, scripts) means the shipped starter model:
        # QGIS 3.22 does not fall back to a file parameter's default during validation.
        self.addParameter(QgsProcessingParameterFile(
            "MODEL", self.tr(description), behavior=FOLDER, defaultValue=default_dir,
            optional=True))

    def add_advanced(self, parameter: QgsProcessingParameterDefinition) -> None:
        """A parameter shown under "Advanced parameters" in the algorithm dialog."""
        parameter.setFlags(parameter.flags() | ADVANCED)
        self.addParameter(parameter)

    def add_resample_parameter(self, layers: str = "the layer") -> None:
        """RESAMPLE_TO_MODEL (advanced, off): read the input at the model card's ground resolution."""
        resample = QgsProcessingParameterBoolean(
            "RESAMPLE_TO_MODEL", self.tr("Resample to the model's resolution"), defaultValue=False)
        resample.setHelp(self.tr(f"Read {layers} at the model's ground resolution; the outputs are then on that "
                                 "grid."))
        self.add_advanced(resample)

    def add_device_parameter(self):
        self.addParameter(QgsProcessingParameterEnum(
            "DEVICE", self.tr("Device"), options=list(DEVICE_CHOICES), defaultValue=0))

    def add_generation_parameters(self, default_count: int = 16) -> None:
        """COUNT, SEED, BATCH_SIZE, DEVICE and OUTPUT_FOLDER + the INDEX, PREVIEW and PAIRS outputs of a
        pair generator (synthesize_pairs, synthesize_sar_pairs)."""
        self.addParameter(QgsProcessingParameterNumber(
            "COUNT", self.tr("Number of pairs"), INTEGER_NUMBER,
            defaultValue=default_count, minValue=1, maxValue=100000))
        self.addParameter(QgsProcessingParameterNumber(
            "SEED", self.tr("Random seed"), INTEGER_NUMBER, defaultValue=0, minValue=0))
        self.add_advanced(QgsProcessingParameterNumber(
            "BATCH_SIZE", self.tr("Pairs per batch"), INTEGER_NUMBER,
            defaultValue=8, minValue=1, maxValue=256))
        self.add_device_parameter()
        self.addParameter(QgsProcessingParameterFolderDestination(
            "OUTPUT_FOLDER", self.tr("Output folder (new or empty)")))
        self.addOutput(QgsProcessingOutputFile("INDEX", self.tr("Index of the generated pairs (CSV)")))
        self.addOutput(QgsProcessingOutputFile("PREVIEW", self.tr("Preview grid (PNG)")))
        self.addOutput(QgsProcessingOutputNumber("PAIRS", self.tr("Pairs written")))

    @staticmethod
    def generation_outputs(result) -> dict:
        """Processing outputs of a pair generator's result; {} when the user cancelled."""
        if result is None:
            return {}
        return {"OUTPUT_FOLDER": result.output_dir, "INDEX": result.index_path, "PREVIEW": result.preview_path,
                "PAIRS": len(result.pairs)}

    def generation_values(self, parameters, context) -> dict:
        """The core parameters every pair generator shares, from the parameters add_generation_parameters
        added (+ MODEL and STEPS)."""
        return dict(output_dir=self.parameterAsString(parameters, "OUTPUT_FOLDER", context),
                    count=self.parameterAsInt(parameters, "COUNT", context),
                    model_dir=self.parameterAsFile(parameters, "MODEL", context),
                    steps=self.parameterAsInt(parameters, "STEPS", context),
                    seed=self.parameterAsInt(parameters, "SEED", context),
                    batch_size=self.parameterAsInt(parameters, "BATCH_SIZE", context),
                    device=self.device(parameters, context))

    def device(self, parameters, context) -> str:
        return DEVICE_CHOICES[self.parameterAsEnum(parameters, "DEVICE", context)]

    def run_core(self, call, feedback):
        """Run `call(progress)` with Processing feedback; None when the user cancelled.

        `call` builds the core parameters too, so a bad parameter value reaches the user as a
        plain message like any other core error.
        """
        from core.progress import Cancelled
        from rs_diffusion_plugin.progress import FeedbackProgress
        try:
            return call(FeedbackProgress(feedback))
        except Cancelled:
            return None
        except Exception as exc:
            raise self.user_error(exc) from exc

    @staticmethod
    def user_error(exc: Exception) -> QgsProcessingException:
        """Our own errors are already worded for the user; keep them free of tracebacks."""
        from core.checkpoint import ModelError
        from core.raster import RasterError
        if isinstance(exc, (RasterError, ModelError, ValueError)):
            return QgsProcessingException(str(exc))
        return QgsProcessingException(f"{type(exc).__name__}: {exc}")

    @staticmethod
    def style_on_load(context, layer_id: str, style) -> None:
        """Run `style(layer)` on an output when Processing loads it into the project."""
        if not context.willLoadLayerOnCompletion(layer_id):
            return
        styler = LayerStyler(style)
        _STYLERS.append(styler)  # Processing keeps only a pointer; Python must keep the object
        context.layerToLoadOnCompletionDetails(layer_id).setPostProcessor(styler)

    def style_classes_on_load(self, context, layer_id: str, classes: list[dict], polygons: bool = False) -> None:
        """Style an output with the card's class colours when Processing loads it."""
        self.style_on_load(context, layer_id,
                           lambda layer: (style_polygon_layer if polygons else style_class_layer)(layer, classes))


_STYLERS: list = []


def gpkg_path(path: str | None) -> str:
    """Polygons are always written as a GeoPackage; an unset optional output is ''."""
    if not path:
        return ""
    if not path.lower().endswith(".gpkg"):
        raise ValueError(f"Polygons are written as a GeoPackage: use a .gpkg file name, not '{path}'.")
    return path


class LayerStyler(QgsProcessingLayerPostProcessorInterface):
    def __init__(self, style):
        super().__init__()
        self.style = style

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802
        self.style(layer)

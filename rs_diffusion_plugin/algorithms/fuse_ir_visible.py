"""rsdiffusion:fuse_ir_visible — one fused layer from an infrared and a visible layer (Dig2DIG / DDFM)."""
from __future__ import annotations

from qgis.core import (QgsProcessingOutputString, QgsProcessingParameterBand, QgsProcessingParameterEnum,
                       QgsProcessingParameterNumber, QgsProcessingParameterRasterDestination,
                       QgsProcessingParameterRasterLayer)

from core.catalog import starter_model_dir
from rs_diffusion_plugin.algorithms.base import RsDiffusionAlgorithm
from rs_diffusion_plugin.layers import style_unit_gray
from rs_diffusion_plugin.qgis_enums import DOUBLE_NUMBER, INTEGER_NUMBER

# core.fusion.prior.TASK and core.fusion.sampler's FUSION_MODES, DIG_KINDS, DIG_DISTANCES, EM_MODES, without
# importing torch
TASK = "fusion-prior"
FUSION_MODES = ("dig", "ddfm")
DIG_KINDS = ("scalar", "spatial")
DIG_DISTANCES = ("l2", "squared_l2", "mse")
EM_MODES = ("paper", "code")


class FuseIrVisibleAlgorithm(RsDiffusionAlgorithm):
    NAME = "fuse_ir_visible"
    DISPLAY_NAME = "Fuse infrared and visible (Dig2DIG / DDFM)"
    GROUP = "Image fusion"
    HELP = ("Fuses an infrared layer and a visible layer of the same scene into one image that keeps the warm "
            "targets of the infrared and the texture and detail of the visible, with a diffusion image prior "
            "and no fusion training. MODE dig (Dig2DIG): the weight of each source is recomputed every "
            "DIG_INTERVAL steps from how much information the prior gains from it (scalar: one weight per tile; "
            "spatial: per pixel), 25 steps by default. The gains are L2 distances over the whole tile "
            "(DIG_DISTANCE l2, the paper's), so keep TILE_SIZE at 256 unless you know why: a larger tile makes "
            "the weights more decisive, a smaller one closer to 0.5. DIG_TEMPERATURE 1 is the paper's softmax. MODE ddfm: DDFM's fixed weights (the paper uses 100 "
            "steps). The result is on the visible layer's grid and keeps its colours (the fused brightness "
            "replaces the visible brightness); when the infrared layer is on another grid (size, pixel size, "
            "extent or CRS) it is resampled (bilinear) onto the visible grid first. OUTPUT_WEIGHTS (dig mode "
            "only): the infrared weight (0..1) of each DIG recomputation, one band each. Default prior: a small "
            "starter trained on procedural scenes; for real imagery convert guided-diffusion's "
            "256x256_diffusion_uncond.pt with `python -m training convert-guided-diffusion` and choose the "
            "folder it writes as MODEL. Large images run tile by tile with overlap (an image smaller than a tile "
            "is padded to one); the tile size must be a multiple of the prior's downsampling factor. The log "
            "states the work (tiles x steps) before the run starts: crop the layers to fuse less.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("INFRARED", self.tr("Infrared layer")))
        self.addParameter(QgsProcessingParameterRasterLayer("VISIBLE", self.tr("Visible layer (gray or RGB)")))
        self.add_model_parameter(str(starter_model_dir(TASK)), "Fusion prior folder (empty: starter prior)")
        self.addParameter(QgsProcessingParameterNumber(
            "STEPS", self.tr("Sampling steps"), INTEGER_NUMBER,
            defaultValue=25, minValue=2, maxValue=1000))
        self.addParameter(QgsProcessingParameterNumber(
            "DIG_INTERVAL", self.tr("Recompute the DIG weights every S steps"), INTEGER_NUMBER,
            defaultValue=10, minValue=1, maxValue=1000))
        self.addParameter(QgsProcessingParameterEnum(
            "MODE", self.tr("Method"), options=list(FUSION_MODES), defaultValue="dig", usesStaticStrings=True))
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", self.tr("Fused")))
        self.addParameter(QgsProcessingParameterRasterDestination(
            "OUTPUT_WEIGHTS", self.tr("Infrared weight per DIG recomputation"), optional=True,
            createByDefault=False))
        self.add_advanced(QgsProcessingParameterEnum(
            "DIG_KIND", self.tr("DIG weights"), options=list(DIG_KINDS), defaultValue="scalar",
            usesStaticStrings=True))
        self.add_advanced(QgsProcessingParameterEnum(
            "DIG_DISTANCE", self.tr("DIG distance l (l2: the paper's L2 distance over the tile)"),
            options=list(DIG_DISTANCES), defaultValue="l2", usesStaticStrings=True))
        self.add_advanced(QgsProcessingParameterNumber(
            "DIG_TEMPERATURE", self.tr("DIG softmax temperature (1: the paper's Eq. 11)"),
            DOUBLE_NUMBER, defaultValue=1.0, minValue=1e-3))
        self.add_advanced(QgsProcessingParameterEnum(
            "DDFM_MODE", self.tr("DDFM EM step"), options=list(EM_MODES), defaultValue="paper",
            usesStaticStrings=True))
        self.add_advanced(QgsProcessingParameterBand(   # optional: QGIS 3.22 rejects a left-out band, default or not
            "INFRARED_BAND", self.tr("Infrared band"), defaultValue=1, parentLayerParameterName="INFRARED",
            optional=True))
        self.add_advanced(QgsProcessingParameterNumber(
            "SEED", self.tr("Random seed"), INTEGER_NUMBER, defaultValue=0, minValue=0))
        self.add_advanced(QgsProcessingParameterNumber(
            "TILE_SIZE", self.tr("Tile size in pixels"), INTEGER_NUMBER,
            defaultValue=256, minValue=32, maxValue=4096))
        self.add_advanced(QgsProcessingParameterNumber(
            "OVERLAP", self.tr("Tile overlap in pixels"), INTEGER_NUMBER,
            defaultValue=32, minValue=0, maxValue=1024))
        self.add_device_parameter()
        self.addOutput(QgsProcessingOutputString("PRIOR", self.tr("Prior used")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        from core.fusion.pipeline import FusionParams, fuse_ir_visible
        from core.fusion.sampler import FusionSettings
        from rs_diffusion_plugin.layers import raster_source
        infrared = self.parameterAsRasterLayer(parameters, "INFRARED", context)
        visible = self.parameterAsRasterLayer(parameters, "VISIBLE", context)

        def run(progress):
            settings = FusionSettings(
                mode=self.parameterAsEnumString(parameters, "MODE", context),
                steps=self.parameterAsInt(parameters, "STEPS", context),
                dig_interval=self.parameterAsInt(parameters, "DIG_INTERVAL", context),
                dig_kind=self.parameterAsEnumString(parameters, "DIG_KIND", context),
                dig_distance=self.parameterAsEnumString(parameters, "DIG_DISTANCE", context),
                dig_temperature=self.parameterAsDouble(parameters, "DIG_TEMPERATURE", context),
                em_mode=self.parameterAsEnumString(parameters, "DDFM_MODE", context),
                seed=self.parameterAsInt(parameters, "SEED", context))
            params = FusionParams(
                infrared_path=raster_source(infrared), visible_path=raster_source(visible),
                output_path=self.parameterAsOutputLayer(parameters, "OUTPUT", context),
                model_dir=self.parameterAsFile(parameters, "MODEL", context),
                settings=settings,
                weights_path=self.parameterAsOutputLayer(parameters, "OUTPUT_WEIGHTS", context) or "",
                infrared_band=self.parameterAsInt(parameters, "INFRARED_BAND", context) or 1,
                tile_size=self.parameterAsInt(parameters, "TILE_SIZE", context),
                overlap=self.parameterAsInt(parameters, "OVERLAP", context),
                device=self.device(parameters, context),
                infrared_name=infrared.name() if infrared is not None else "",
                visible_name=visible.name() if visible is not None else "")
            return fuse_ir_visible(params, progress)

        result = self.run_core(run, feedback)
        if result is None:
            return {}
        outputs = {"OUTPUT": result.output_path, "PRIOR": result.prior}
        if result.weights_path:
            self.style_on_load(context, result.weights_path, style_unit_gray)
            outputs["OUTPUT_WEIGHTS"] = result.weights_path
        return outputs

"""rsdiffusion:refine_classification — IDGBR: sharper class boundaries for an existing classification."""
from __future__ import annotations

from qgis.core import (QgsProcessingOutputNumber,
                       QgsProcessingParameterBand, QgsProcessingParameterNumber,
                       QgsProcessingParameterRasterDestination, QgsProcessingParameterRasterLayer,
                       QgsProcessingParameterString)

from core.catalog import starter_model_dir
from rs_diffusion_plugin.algorithms.base import RsDiffusionAlgorithm
from rs_diffusion_plugin.layers import apply_class_style, class_style, style_unit_gray

TASK = "idgbr"


class RefineClassificationAlgorithm(RsDiffusionAlgorithm):
    NAME = "refine_classification"
    DISPLAY_NAME = "Refine classification boundaries (IDGBR)"
    GROUP = "Refinement"
    HELP = ("Sharpens the class boundaries of an existing classification raster (from any classifier) "
            "with an IDGBR diffusion model that looks at the image and at the classification together. "
            "Interiors mostly stay as they are; edges are redrawn along what the image shows.\n\n"
            "The refined raster keeps the classification's grid, CRS, data type, nodata and class values "
            "(and colour table): it only ever contains values the classification itself uses. Nodata in the "
            "image or in the classification stays nodata.\n\n"
            "Value mapping: when the classification's values are the model's class values, nothing needs "
            "to be set. Otherwise give VALUE_MAP as 'raster value:model class value, ...', e.g. '3:1, 7:4'; "
            "every value of the classification must map to one of the model's classes.\n\n"
            "Samples: the diffusion sampler is random; with SAMPLES > 1 it runs several times per tile and "
            "averages the class probabilities (steadier, slower). The optional uncertainty raster has two "
            "bands in 0..1: 'entropy' (how undecided the averaged probabilities are) and 'disagreement' "
            "(the share of samples whose class differs from the final one; needs SAMPLES > 1). "
            "CHANGED_FRACTION is the share of valid pixels whose class changed; the log also gives it per "
            "class.\n\n"
            "Reference (optional): a class raster on the same grid with the true classes (same values as the "
            "classification, or mapped by VALUE_MAP). The log then scores the classification and the refined "
            "map against it (mIoU, bIoU@3, WFm@3: boundary scores within 3 px) and warns when the refined map "
            "scores lower; COARSE_WFM3 and REFINED_WFM3 hold the WFm@3 of both. A refiner trained on other "
            "data can make a map worse: check it on a labelled area first.\n\n"
            "STEPS, GUIDANCE and STRENGTH 0 use the model's own settings. STRENGTH is the share of the sampling "
            "chain run from the classification's own (noised) encoding: 1 redraws the map from noise (the paper), "
            "lower values keep more of it. MAX_ENTROPY keeps the classification's class wherever the refiner is "
            "unsure (normalised entropy of its probabilities above the value; 1: every change kept, the paper; "
            "0: the model's). Default model: the shipped starter.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", self.tr("Image")))
        self.addParameter(QgsProcessingParameterRasterLayer(
            "CLASSIFICATION", self.tr("Classification to refine (class values, same grid as the image)")))
        self.add_model_parameter(str(starter_model_dir(TASK)), "IDGBR model directory (empty: starter model)")
        self.addParameter(QgsProcessingParameterRasterLayer(
            "REFERENCE", self.tr("Reference classes to score against (optional, same grid)"), optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            "SAMPLES", self.tr("Samples per tile (averaged)"), INTEGER_NUMBER,
            defaultValue=1, minValue=1, maxValue=64))
        self.add_device_parameter()
        self.add_advanced(QgsProcessingParameterString(
            "VALUE_MAP", self.tr("Value mapping 'raster value:model class value, ...' (empty: the same values)"),
            optional=True))
        self.add_advanced(QgsProcessingParameterNumber(
            "STEPS", self.tr("Sampling steps (0: the model's)"), INTEGER_NUMBER,
            defaultValue=0, minValue=0, maxValue=1000))
        self.add_advanced(QgsProcessingParameterNumber(
            "GUIDANCE", self.tr("Guidance scale (0: the model's)"), DOUBLE_NUMBER,
            defaultValue=0.0, minValue=0.0, maxValue=50.0))
        self.add_advanced(QgsProcessingParameterNumber(
            "STRENGTH", self.tr("Strength: share of the chain run from the noised classification (0: the model's)"),
            DOUBLE_NUMBER, defaultValue=0.0, minValue=0.0, maxValue=1.0))
        self.add_advanced(QgsProcessingParameterNumber(
            "MAX_ENTROPY", self.tr("Keep the classification where the refiner's entropy exceeds (0: the model's, "
                                   "1: no gate)"), DOUBLE_NUMBER, defaultValue=0.0, minValue=0.0, maxValue=1.0))
        self.add_advanced(QgsProcessingParameterBand(
            "BANDS", self.tr("Image bands, in the model's order (empty: the first bands)"),
            parentLayerParameterName="INPUT", allowMultiple=True, optional=True))
        self.add_advanced(QgsProcessingParameterNumber(
            "SEED", self.tr("Random seed"), INTEGER_NUMBER, defaultValue=0, minValue=0))
        self.add_advanced(QgsProcessingParameterNumber(
            "BATCH_SIZE", self.tr("Tiles per batch"), INTEGER_NUMBER,
            defaultValue=4, minValue=1, maxValue=256))
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", self.tr("Refined classification")))
        self.addParameter(QgsProcessingParameterRasterDestination(
            "OUTPUT_UNCERTAINTY", self.tr("Uncertainty (entropy, disagreement)"), optional=True,
            createByDefault=False))
        self.addOutput(QgsProcessingOutputNumber("CHANGED_FRACTION", self.tr("Share of pixels that changed class")))
        self.addOutput(QgsProcessingOutputNumber("COARSE_WFM3", self.tr("WFm@3 of the classification (reference)")))
        self.addOutput(QgsProcessingOutputNumber("REFINED_WFM3", self.tr("WFm@3 of the refined map (reference)")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        # torch & co. load on first use, not while QGIS starts
        from core.refinement.pipeline import RefineParams, parse_value_map, refine_raster
        from rs_diffusion_plugin.layers import raster_source
        image = self.parameterAsRasterLayer(parameters, "INPUT", context)
        classification = self.parameterAsRasterLayer(parameters, "CLASSIFICATION", context)
        reference = self.parameterAsRasterLayer(parameters, "REFERENCE", context)

        def run(progress):
            params = RefineParams(
                image_path=raster_source(image),
                classification_path=raster_source(classification),
                output_path=self.parameterAsOutputLayer(parameters, "OUTPUT", context),
                model_dir=self.parameterAsFile(parameters, "MODEL", context),
                samples=self.parameterAsInt(parameters, "SAMPLES", context),
                steps=self.parameterAsInt(parameters, "STEPS", context),
                guidance_scale=self.parameterAsDouble(parameters, "GUIDANCE", context),
                strength=self.parameterAsDouble(parameters, "STRENGTH", context),
                max_entropy=self.parameterAsDouble(parameters, "MAX_ENTROPY", context),
                uncertainty_path=self.parameterAsOutputLayer(parameters, "OUTPUT_UNCERTAINTY", context) or "",
                value_map=parse_value_map(self.parameterAsString(parameters, "VALUE_MAP", context)),
                bands=self.parameterAsInts(parameters, "BANDS", context) or None,
                seed=self.parameterAsInt(parameters, "SEED", context),
                batch_size=self.parameterAsInt(parameters, "BATCH_SIZE", context),
                device=self.device(parameters, context),
                reference_path=raster_source(reference) if reference is not None else "",
                image_layer_name=image.name(),
                classification_layer_name=classification.name(),
                reference_layer_name=reference.name() if reference is not None else "")
            return refine_raster(params, progress)

        result = self.run_core(run, feedback)
        if result is None:
            return {}
        style = class_style(classification)
        self.style_on_load(context, result.output_path, lambda layer: apply_class_style(layer, style))
        outputs = {"OUTPUT": result.output_path, "CHANGED_FRACTION": result.changed_fraction}
        if result.scores:
            outputs.update(COARSE_WFM3=result.scores["coarse"]["WFm@3"], REFINED_WFM3=result.scores["refined"]["WFm@3"])
        if result.uncertainty_path:
            self.style_on_load(context, result.uncertainty_path, style_unit_gray)
            outputs["OUTPUT_UNCERTAINTY"] = result.uncertainty_path
        return outputs
from rs_diffusion_plugin.qgis_enums import DOUBLE_NUMBER, INTEGER_NUMBER

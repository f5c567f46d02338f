"""What rsdiffusion:train_segmenter, train_oil_spill_detector and train_change_detector share: the
fine-tuning parameters (base model, output model folder, budget, patch and batch size...), the call of
training.finetune.fit_to_layers, and its outputs. Defaults keep a run within 10 minutes on a 2-core CPU."""
from __future__ import annotations

from qgis.core import (QgsProcessingOutputNumber, QgsProcessingParameterBoolean, QgsProcessingParameterField,
                       QgsProcessingParameterFile, QgsProcessingParameterFolderDestination,
                       QgsProcessingParameterMapLayer, QgsProcessingParameterNumber, QgsProcessingParameterString,
                       QgsRasterLayer)

from rs_diffusion_plugin.algorithms.base import RsDiffusionAlgorithm
from rs_diffusion_plugin.qgis_enums import (DOUBLE_NUMBER, FOLDER, INTEGER_NUMBER, POLYGON_GEOMETRY, POLYGON_SOURCE,
                                            RASTER_SOURCE)

# training.finetune's DEFAULT_STEPS and DEFAULT_BATCH (tests/test_plugin_finetune.py holds them equal), repeated here
# so that listing the algorithms never imports training/ and torch.
DEFAULT_STEPS = {"segmentation": 160, "oilspill": 120, "change": 300}
DEFAULT_BATCH = {"segmentation": 4, "oilspill": 4, "change": 4}
FIT_HELP = (" Starts from BASE_MODEL (empty: the task's starter model; advanced: from scratch) and writes the "
            "fine-tuned model folder to OUTPUT_MODEL, usable as MODEL of the matching tool. The labelled area is "
            "cut into patches; a block of patch rows is held out (never trained on) to score the base and "
            "the new model (SCORE, BASE_SCORE). Unlabelled pixels and nodata are ignored; rare classes weigh "
            "more. Bad labels (outside the image, an empty class field, too few labelled pixels, a class only in "
            "the held-out rows) are refused before training. The default budget (STEPS) takes at most "
            "about 10 minutes on a 2-core CPU, seconds on a GPU. Running again with the same output goes on from "
            "the last checkpoint (e.g. after a cancel, or with more steps).")


class TrainAlgorithm(RsDiffusionAlgorithm):
    TASK = ""           # training.finetune.FitParams.task
    GROUP = "Training"

    def add_labels_parameters(self, description: str, class_field: bool = True) -> None:
        self.addParameter(QgsProcessingParameterMapLayer("LABELS", self.tr(description),
                                                         types=[RASTER_SOURCE, POLYGON_SOURCE]))
        if class_field:
            self.addParameter(QgsProcessingParameterField(
                "CLASS_FIELD", self.tr("Class field (polygons)"), parentLayerParameterName="LABELS", optional=True))

    def add_fit_parameters(self, encoder: bool = True) -> None:
        """The shared parameters; `encoder`: the model family offers an encoder choice from scratch."""
        self.addParameter(QgsProcessingParameterFile(
            "BASE_MODEL", self.tr("Base model folder (empty: starter model)"), behavior=FOLDER, optional=True))
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT_MODEL", self.tr("New model folder")))
        self.addParameter(QgsProcessingParameterNumber(
            "STEPS", self.tr("Training steps"), INTEGER_NUMBER, DEFAULT_STEPS[self.TASK], minValue=1))
        self.addParameter(QgsProcessingParameterNumber(
            "TIME_BUDGET", self.tr("Time budget in minutes (0: none)"), DOUBLE_NUMBER, 0.0, minValue=0.0))
        self.add_advanced(QgsProcessingParameterBoolean(
            "FROM_SCRATCH", self.tr("From scratch (random weights, not the base model)"), defaultValue=False))
        if encoder:
            self.add_advanced(QgsProcessingParameterString(
                "ENCODER", self.tr("Encoder from scratch (smp or tu-<timm> name; empty: the starter's)"),
                defaultValue="", optional=True))
        self.add_advanced(QgsProcessingParameterNumber(
            "PATCH_SIZE", self.tr("Patch size (pixels, multiple of 32)"), INTEGER_NUMBER, 128, minValue=32))
        self.add_advanced(QgsProcessingParameterNumber(
            "BATCH_SIZE", self.tr("Patches per batch"), INTEGER_NUMBER, DEFAULT_BATCH[self.TASK], minValue=1))
        self.add_advanced(QgsProcessingParameterNumber(
            "LEARNING_RATE", self.tr("Learning rate (0: the task's default)"), DOUBLE_NUMBER, 0.0, minValue=0.0))
        self.add_advanced(QgsProcessingParameterNumber(
            "HOLDOUT", self.tr("Held-out share of patch rows (%)"), DOUBLE_NUMBER, 20.0, minValue=0.0,
            maxValue=90.0))
        self.add_advanced(QgsProcessingParameterNumber(
            "SEED", self.tr("Random seed"), INTEGER_NUMBER, 0, minValue=0))
        self.add_device_parameter()
        self.addOutput(QgsProcessingOutputNumber("SCORE", self.tr("Held-out score of the new model")))
        self.addOutput(QgsProcessingOutputNumber("BASE_SCORE", self.tr("Held-out score of the base model")))

    def labels_source(self, parameters, context, field: bool = True) -> dict:
        """labels_path, labels_layer (and class_field) of the LABELS layer."""
        from rs_diffusion_plugin.layers import raster_source, vector_source
        labels = self.parameterAsLayer(parameters, "LABELS", context)
        if isinstance(labels, QgsRasterLayer):
            return {"labels_path": raster_source(labels)}
        path, layer = vector_source(labels)
        if labels.geometryType() != POLYGON_GEOMETRY:
            raise ValueError(f"Layer '{labels.name()}' does not hold polygons: labels are polygons or a class "
                             "raster.")
        values = {"labels_path": path, "labels_layer": layer}
        if field:
            values["class_field"] = self.parameterAsString(parameters, "CLASS_FIELD", context) or ""
        return values

    def fit(self, parameters, context, feedback, layers) -> dict:
        """Run fit_to_layers with the shared parameters and `layers()`: the FitParams fields of the layers
        (paths, class field, task options), read inside the run so that a bad layer is a plain message."""
        from training.finetune import SCRATCH, FitParams, fit_to_layers

        def run(progress):
            params = FitParams(
                task=self.TASK, output_model=self.parameterAsString(parameters, "OUTPUT_MODEL", context),
                base_model=SCRATCH if self.parameterAsBool(parameters, "FROM_SCRATCH", context)
                else self.parameterAsFile(parameters, "BASE_MODEL", context) or "",
                encoder=(self.parameterAsString(parameters, "ENCODER", context) or "")
                if self.parameterDefinition("ENCODER") else "",
                steps=self.parameterAsInt(parameters, "STEPS", context),
                time_budget_minutes=self.parameterAsDouble(parameters, "TIME_BUDGET", context),
                patch_size=self.parameterAsInt(parameters, "PATCH_SIZE", context),
                batch_size=self.parameterAsInt(parameters, "BATCH_SIZE", context),
                lr=self.parameterAsDouble(parameters, "LEARNING_RATE", context),
                val_fraction=self.parameterAsDouble(parameters, "HOLDOUT", context) / 100.0,
                seed=self.parameterAsInt(parameters, "SEED", context),
                device=self.device(parameters, context), **layers())
            return fit_to_layers(params, progress)

        result = self.run_core(run, feedback)
        if result is None:
            return {}
        key = "IoU" if self.TASK == "change" else "mIoU"
        return {"OUTPUT_MODEL": result.model_dir, "SCORE": result.scores.get(key),
                "BASE_SCORE": result.base_scores.get(key)}

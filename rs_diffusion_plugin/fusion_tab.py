"""The dock's "Fusion" tab: infrared + visible layer + a diffusion prior -> a fused layer (Dig2DIG / DDFM).

Creating the tab reads the prior's card only (core.checkpoint.load_card); core.fusion (the prior's
UNet, diffusers) is imported by the task, in its worker thread.
"""
from __future__ import annotations

import json
from pathlib import Path

from qgis.core import QgsProject, QgsRasterLayer
from qgis.gui import QgsRasterBandComboBox
from qgis.PyQt.QtWidgets import QCheckBox, QComboBox, QFormLayout, QSpinBox

from rs_diffusion_plugin.algorithms.fuse_ir_visible import DIG_KINDS, FUSION_MODES, TASK
from rs_diffusion_plugin.layers import raster_source, style_unit_gray
from rs_diffusion_plugin.task import CoreTask
from rs_diffusion_plugin.widgets import LayerPicker, ModelPicker, TaskTab, add_row


class PriorPicker(ModelPicker):
    """A fusion prior: a model folder with a card, or a plain diffusers UNet2DModel folder."""

    def describe(self, path: str) -> None:
        from core.checkpoint import CARD_NAME
        folder = Path(path)
        if folder.is_dir() and not (folder / CARD_NAME).is_file() and (folder / "config.json").is_file():
            self.label.setText(self._diffusers_text(folder))
        else:
            super().describe(path)

    @staticmethod
    def _diffusers_text(folder: Path) -> str:
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return f"<span style='color:#b00'>{folder / 'config.json'} is unreadable: {exc}</span>"
        if config.get("_class_name") != "UNet2DModel":
            return (f"<span style='color:#b00'>'{folder}' holds a diffusers '{config.get('_class_name')}', "
                    "not a UNet2DModel.</span>")
        return f"Prior: {folder.name} (diffusers UNet2DModel, {config.get('in_channels', 3)} channel(s))"


class FusionTab(TaskTab):
    title = "Fusion"

    def build_form(self, layout) -> None:
        form = QFormLayout()
        self.infrared_combo = LayerPicker()
        add_row(form, "Infrared layer", self.infrared_combo, "The thermal / infrared image, resampled onto the "
                "visible layer's grid when the grids differ")
        self.band_combo = QgsRasterBandComboBox()
        self.band_combo.setLayer(self.infrared_combo.currentLayer())
        self.infrared_combo.layerChanged.connect(self.band_combo.setLayer)
        add_row(form, "Infrared band", self.band_combo, "The band of the infrared layer to fuse")
        self.visible_combo = LayerPicker()
        add_row(form, "Visible layer", self.visible_combo, "Gray or RGB; the result is on this layer's grid and "
                "keeps its colours")
        self.visible_combo.keep_apart_from(self.infrared_combo)
        self.model_picker = PriorPicker(TASK)
        add_row(form, "Prior", self.model_picker, "The diffusion prior. The starter prior was trained on procedural "
                "scenes; for real imagery convert guided-diffusion's 256x256_diffusion_uncond.pt with "
                "`python -m training convert-guided-diffusion`")
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(2, 1000)
        self.steps_spin.setValue(25)
        add_row(form, "Sampling steps", self.steps_spin, "Reverse diffusion steps: Dig2DIG 25, DDFM 100 in the "
                "papers; the time grows in proportion (the log states the work before the run)")
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(FUSION_MODES)
        add_row(form, "Method", self.mode_combo, "dig: Dig2DIG (weights from the diffusion information gain, DIG); "
                "ddfm: DDFM's fixed weights")
        self.interval_spin = QSpinBox()
        self.interval_spin.setRange(1, 1000)
        self.interval_spin.setValue(10)
        add_row(form, "Reweight every S steps", self.interval_spin, "DIG interval S: every S steps the weight of "
                "each source is recomputed from how much the prior gains from it over the next S steps (the "
                "paper: S = 10 with 25 steps; a smaller S costs more prior evaluations)")
        self.kind_combo = QComboBox()
        self.kind_combo.addItems(DIG_KINDS)
        add_row(form, "Weights per", self.kind_combo, "DIG kind. scalar: one weight per source and 256 px tile "
                "(the paper's Eq. 11, default); spatial: one per pixel, from the gains in the 64 px window "
                "around it")
        self.add_device_row(form)
        self.add_raster_output_row(form, "Fused raster")
        self.weights_check = QCheckBox("Also write the per-step weight maps (infrared weight, one band per "
                                       "DIG recomputation)")
        add_row(form, "", self.weights_check, "A 0..1 raster per DIG recomputation: 0 all visible, 1 all infrared")
        layout.addLayout(form)
        self.mode_combo.currentTextChanged.connect(self.update_dig_rows)
        self.update_dig_rows(self.mode_combo.currentText())

    def update_dig_rows(self, mode: str) -> None:
        """Interval, kind and weight maps exist only in the dig mode."""
        for widget in (self.interval_spin, self.kind_combo, self.weights_check):
            widget.setEnabled(mode == "dig")

    def make_task(self) -> CoreTask:
        infrared, visible = self.infrared_combo.currentLayer(), self.visible_combo.currentLayer()
        infrared_path, visible_path = raster_source(infrared), raster_source(visible)
        mode = self.mode_combo.currentText()
        output = self.output_path("fusion_", f"{visible.name()}_fused.tif")
        weights = f"{Path(output).with_suffix('')}_weights.tif" if mode == "dig" and self.weights_check.isChecked() \
            else ""
        options = dict(
            infrared_path=infrared_path, visible_path=visible_path, output_path=output,
            model_dir=self.model_picker.path(),
            settings=dict(mode=mode, steps=self.steps_spin.value(), dig_interval=self.interval_spin.value(),
                          dig_kind=self.kind_combo.currentText()),
            weights_path=weights,
            infrared_band=self.band_combo.currentBand() if self.band_combo.currentBand() > 0 else 1,
            device=self.device_combo.currentText(), infrared_name=infrared.name(), visible_name=visible.name())
        return CoreTask(f"Fuse {infrared.name()} and {visible.name()}", run_fusion, options)

    def on_success(self, result) -> None:
        name = Path(result.output_path).stem
        project = QgsProject.instance()
        fused = QgsRasterLayer(result.output_path, name)
        if fused.isValid():
            project.addMapLayer(fused)
        if result.weights_path:
            weights = QgsRasterLayer(result.weights_path, f"{name} infrared weights")
            if weights.isValid():
                style_unit_gray(weights)
                project.addMapLayer(weights)
        settings = result.settings
        method = f"{settings['mode'].upper()}-{settings['steps']}"
        if result.mean_infrared_weight:
            method += ", mean infrared weight " + " / ".join(f"{w:.2f}" for w in result.mean_infrared_weight)
        resampled = "; infrared resampled onto the visible grid" if result.resampled else ""
        self.write(f"Added '{name}' ({method}; {result.tiles} tile(s){resampled}; {result.seconds:.1f} s on "
                   f"{result.device}). Prior used: {result.prior}.")


def run_fusion(options: dict, progress):
    """core.fusion.pipeline.fuse_ir_visible from plain values, imported in the task's worker thread
    (torch models and diffusers load there, not in the GUI thread)."""
    from core.fusion.pipeline import FusionParams, fuse_ir_visible
    from core.fusion.sampler import FusionSettings
    options = dict(options, settings=FusionSettings(**options["settings"]))
    return fuse_ir_visible(FusionParams(**options), progress)

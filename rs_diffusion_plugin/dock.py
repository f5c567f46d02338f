"""The rs-diffusion dock: one tab per task, each running its core call in a CoreTask."""
from __future__ import annotations

from qgis.PyQt.QtWidgets import QDockWidget, QTabWidget

from rs_diffusion_plugin.change_tab import ChangeTab
from rs_diffusion_plugin.fusion_tab import FusionTab
from rs_diffusion_plugin.oilspill_tab import OilSpillTab
from rs_diffusion_plugin.refine_tab import RefineTab
from rs_diffusion_plugin.segment_tab import SegmentTab
from rs_diffusion_plugin.synthesize_tab import SynthesizeTab
from rs_diffusion_plugin.train_tab import TrainTab


class RsDiffusionDock(QDockWidget):
    def __init__(self, parent=None):
        super().__init__("rs-diffusion", parent)
        self.setObjectName("RsDiffusionDock")
        self.tabs = QTabWidget()
        self.segment_tab = SegmentTab()
        self.refine_tab = RefineTab()
        self.synthesize_tab = SynthesizeTab()
        self.oilspill_tab = OilSpillTab()
        self.fusion_tab = FusionTab()
        self.change_tab = ChangeTab()
        self.train_tab = TrainTab()
        for tab in (self.segment_tab, self.refine_tab, self.synthesize_tab, self.oilspill_tab, self.fusion_tab,
                    self.change_tab, self.train_tab):
            self.tabs.addTab(tab, tab.title)
        self.setWidget(self.tabs)

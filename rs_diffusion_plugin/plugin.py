"""The plugin object QGIS holds: toolbar button, dock, Processing provider.

Dependencies are checked before anything imports torch: when they are missing the
button opens the installer dialog and Processing gets no provider (one log line,
no traceback).
"""
from __future__ import annotations

from pathlib import Path

from qgis.core import Qgis, QgsApplication, QgsMessageLog
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction

from core.catalog import set_model_library
from rs_diffusion_plugin import dependencies
from rs_diffusion_plugin.library import model_library_dir

LOG_TAG = "rs-diffusion"


def _icon_path() -> str:
    here = Path(__file__).resolve().parent
    for candidate in (here / "icon.svg", here.parent / "resources" / "icons" / "rs_diffusion.svg"):
        if candidate.is_file():
            return str(candidate)
    return ""


class RsDiffusionPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.profile_dir = QgsApplication.qgisSettingsDirPath()
        dependencies.configure_sys_path(self.profile_dir)
        # Before Processing asks for the starter models' folders: they are in this profile's library
        set_model_library(model_library_dir(self.profile_dir))
        self.provider = None
        self.dock = None
        self.action = None
        self.toolbar = None

    # Processing (also called by qgis_process, where there is no iface)
    def initProcessing(self):  # noqa: N802
        if self.provider is not None:
            return
        missing = dependencies.missing_dependencies()
        if missing:
            QgsMessageLog.logMessage(
                f"rs-diffusion: missing Python packages ({', '.join(missing)}); Processing algorithms are "
                "unavailable until they are installed from the rs-diffusion toolbar button.", LOG_TAG,
                Qgis.MessageLevel.Warning)
            return
        from rs_diffusion_plugin.provider import RsDiffusionProvider
        self.provider = RsDiffusionProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802
        self.initProcessing()
        self.action = QAction(QIcon(_icon_path()), "rs-diffusion", self.iface.mainWindow())
        self.action.setObjectName("rsDiffusionAction")
        self.action.setToolTip("rs-diffusion: diffusion methods for remote sensing")
        self.action.triggered.connect(self.show_panel)
        self.toolbar = self.iface.addToolBar("rs-diffusion")
        self.toolbar.setObjectName("rsDiffusionToolbar")
        self.toolbar.addAction(self.action)
        self.iface.addPluginToRasterMenu("rs-diffusion", self.action)

    def show_panel(self):
        missing = dependencies.missing_dependencies()
        if missing:
            self._offer_install(missing)
            return
        self.initProcessing()
        if self.dock is None:
            from rs_diffusion_plugin.dock import RsDiffusionDock
            self.dock = RsDiffusionDock(self.iface.mainWindow())
            self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        self.dock.show()
        self.dock.raise_()

    def _offer_install(self, missing):
        target = dependencies.dependency_dir(self.profile_dir)
        requirements = [dependencies.REQUIRED_MODULES[m] for m in missing]
        dialog = dependencies.DependencyInstallDialog(str(target), requirements, self.iface.mainWindow())
        dialog.exec()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        if self.dock is not None:
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        if self.action is not None:
            self.iface.removePluginRasterMenu("rs-diffusion", self.action)
            self.action.deleteLater()
        if self.toolbar is not None:
            self.toolbar.deleteLater()

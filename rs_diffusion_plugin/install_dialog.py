"""The "Install starter models…" dialog: the models pack from a local file or a URL the user types, installed
into the user model library in a QgsTask (progress, cancel) by core.model_pack.install_pack, which checks
every file's SHA-256 against the pack's manifest before anything is used. Nothing is downloaded unless the
user typed a URL and pressed Install."""
from __future__ import annotations

from qgis.core import QgsApplication
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import QObject, pyqtSignal
from qgis.PyQt.QtWidgets import (QDialog, QDialogButtonBox, QFormLayout, QLabel, QLineEdit, QProgressBar,
                                 QVBoxLayout)

from core.catalog import model_library
from core.model_pack import install_pack, installed_version
from rs_diffusion_plugin.task import CoreTask


class LibraryEvents(QObject):
    """Tells every model picker that the model library changed (a pack was installed)."""
    changed = pyqtSignal()


library_events = LibraryEvents()


def install_task(source: str) -> CoreTask:
    """The QgsTask that installs the pack at `source` (a file or an http(s) URL) into the model library."""
    library = model_library()
    return CoreTask(f"Install models pack {source}", lambda pack, progress: install_pack(pack, library, progress),
                    source)


class InstallModelsDialog(QDialog):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("rs-diffusion: install starter models")
        self.task: CoreTask | None = None
        library = model_library()
        installed = installed_version(library) if library else ""
        self.info_label = QLabel(
            "The starter models come as a models pack, <code>rs_diffusion_models-&lt;version&gt;.zip</code>, "
            f"published with the plugin. They are installed into your model library <code>{library}</code>, "
            "after the SHA-256 of every file has been checked against the pack's manifest. "
            + (f"Installed now: version {installed}." if installed else "No pack is installed yet."))
        self.info_label.setWordWrap(True)
        form = QFormLayout()
        self.file_widget = QgsFileWidget()
        self.file_widget.setFilter("Models pack (*.zip)")
        self.file_widget.setToolTip("The rs_diffusion_models-<version>.zip you downloaded")
        form.addRow("Pack file", self.file_widget)
        self.url_edit = QLineEdit()
        self.url_edit.setPlaceholderText("https://…/rs_diffusion_models-<version>.zip")
        self.url_edit.setToolTip("Downloaded only when you press Install; used when no file is chosen")
        form.addRow("or URL", self.url_edit)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 100)
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.install_button = self.buttons.addButton("Install", QDialogButtonBox.ButtonRole.ActionRole)
        self.cancel_button = self.buttons.addButton("Cancel install", QDialogButtonBox.ButtonRole.ActionRole)
        self.cancel_button.setEnabled(False)
        self.install_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.info_label)
        layout.addLayout(form)
        for widget in (self.progress_bar, self.status_label, self.buttons):
            layout.addWidget(widget)

    def source(self) -> str:
        return self.file_widget.filePath().strip() or self.url_edit.text().strip()

    def start(self) -> None:
        source = self.source()
        if not source:
            self.status_label.setText("Choose the pack file, or type its URL.")
            return
        if model_library() is None:
            self.status_label.setText("No model library is set: start the plugin from QGIS.")
            return
        self.task = install_task(source)
        self.task.progressChanged.connect(lambda value: self.progress_bar.setValue(int(value)))
        self.task.message.connect(self.status_label.setText)
        self.task.succeeded.connect(self._succeeded)
        self.task.failed.connect(lambda message: self._done(f"Not installed: {message}"))
        self.task.cancelled.connect(lambda: self._done("Cancelled: nothing was installed."))
        self.install_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setValue(0)
        self.status_label.setText("Downloading and checking…" if "://" in source else "Checking…")
        QgsApplication.taskManager().addTask(self.task)

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def reject(self) -> None:
        self.cancel()   # closing the dialog never leaves an install running behind it
        super().reject()

    def _succeeded(self, result) -> None:
        self.progress_bar.setValue(100)
        self._done(f"Installed models pack {result.version}: {', '.join(result.models)}.")
        provider = QgsApplication.processingRegistry().providerById("rsdiffusion")
        if provider is not None:
            provider.refreshAlgorithms()   # their default model folders are now the installed starters
        library_events.changed.emit()

    def _done(self, message: str) -> None:
        self.task = None
        self.install_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.status_label.setText(message)

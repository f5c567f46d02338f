"""Find and install the plugin's Python dependencies inside QGIS.

QGIS runs the system interpreter, so torch & co. may be missing there. They are installed
with pip into a folder of the QGIS profile that goes on ``sys.path`` before the system's
site-packages; packages QGIS itself has already loaded (numpy, PyQt5, osgeo, ...) stay the
loaded ones, and pip is constrained never to change their versions.
Nothing here raises because a dependency is missing.
"""

from __future__ import annotations

import html
import importlib
import importlib.util
import os
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path

from qgis.PyQt.QtCore import QProcess, QProcessEnvironment, pyqtSignal
from qgis.PyQt.QtGui import QFontDatabase
from qgis.PyQt.QtWidgets import QDialog, QDialogButtonBox, QLabel, QPlainTextEdit, QVBoxLayout

ENV_VAR = "RS_DIFFUSION_SITE_PACKAGES"

REQUIRED_MODULES: dict[str, str] = {
    "torch": "torch>=2.1,<=2.14.1",
    "torchvision": "torchvision<=0.29.1",
    "diffusers": "diffusers>=0.30",
    "safetensors": "safetensors>=0.4",
    "segmentation_models_pytorch": "segmentation-models-pytorch>=0.3.3",
    "timm": "timm>=0.9",
    "rasterio": "rasterio>=1.3",
    "fiona": "fiona>=1.9",
    "shapely": "shapely>=2.0",
    "tqdm": "tqdm>=4.60",
}

# Pinned even when not imported yet: QGIS's own bindings are compiled against these.
_ALWAYS_PINNED = ("numpy", "GDAL", "PyQt5", "PyQt5-sip")
_PEP440 = re.compile(r"\d+(\.\d+)*((a|b|rc|\.post|\.dev)\d+)*(\+[a-z0-9.]+)?", re.IGNORECASE)


def dependency_dir(profile_dir: str | os.PathLike) -> Path:
    """Per-profile folder that pip installs into (the user can always write there)."""
    return Path(profile_dir) / "python" / "rs_diffusion_deps"


def _is_system_packages(entry: str) -> bool:
    return Path(entry).name in ("dist-packages", "site-packages") and entry not in _OURS


_OURS: set[str] = set()


def _add_to_sys_path(directory: str | os.PathLike) -> bool:
    """Put a dependency folder after QGIS's own Python folders but before the system's
    site/dist-packages, so that torch finds the newer sympy & co. it was installed with
    (Debian's copies would shadow them), while modules QGIS has already imported (numpy,
    PyQt5, osgeo) stay the ones in sys.modules. False if already present."""
    path = str(Path(directory).resolve())
    if path in sys.path:
        return False
    _OURS.add(path)
    position = next((i for i, entry in enumerate(sys.path) if _is_system_packages(entry)), len(sys.path))
    sys.path.insert(position, path)
    importlib.invalidate_caches()
    return True


def configure_sys_path(profile_dir: str | os.PathLike | None) -> list[str]:
    """Make ``$RS_DIFFUSION_SITE_PACKAGES`` and the profile's dependency folder importable."""
    candidates = [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]
    if profile_dir is not None:
        candidates.append(str(dependency_dir(profile_dir)))
    added = []
    for candidate in candidates:
        if Path(candidate).is_dir() and _add_to_sys_path(candidate):
            added.append(str(Path(candidate).resolve()))
    return added


def missing_dependencies(modules: dict[str, str] | None = None) -> list[str]:
    """Import names that cannot be found; uses ``find_spec`` so nothing heavy is imported."""
    missing = []
    for name in REQUIRED_MODULES if modules is None else modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except Exception:  # a broken half-installed package must not break the check
            found = False
        if not found:
            missing.append(name)
    return missing


def _normalize(name: str) -> str:
    """PEP 503 name, so "segmentation_models_pytorch" matches "segmentation-models-pytorch"."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _loaded_distributions() -> set[str]:
    """Distributions whose modules are already imported (needs Python >= 3.10 to map them)."""
    names = set(_ALWAYS_PINNED)
    mapping = getattr(metadata, "packages_distributions", None)
    if mapping is not None:
        try:
            dists = mapping()
        except Exception:  # one malformed dist-info must not prevent installing
            dists = {}
        for top in {name.partition(".")[0] for name in list(sys.modules)}:
            names.update(dists.get(top, ()))
    return names


def write_constraints(path: str | os.PathLike) -> Path:
    """Pin every already-loaded distribution so pip cannot install a different copy of it."""
    pins: dict[str, tuple[str, str]] = {}
    for name in _loaded_distributions():
        try:
            version = metadata.version(name)
        except Exception:
            continue
        if version and _PEP440.fullmatch(version):
            pins.setdefault(_normalize(name), (name, version))
    lines = sorted((f"{name}=={version}" for name, version in pins.values()), key=str.lower)
    numpy = pins.get("numpy")
    if numpy is None or int(numpy[1].split(".")[0]) < 2:
        lines.append("numpy<2")  # GDAL/QGIS bindings are built against NumPy 1.x
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def python_executable() -> str:
    """The interpreter QGIS itself runs on, so installed wheels match its Python version.

    Inside QGIS ``sys.executable`` is the qgis binary or the first python3 on PATH (pyenv,
    conda...), so the interpreter is looked up under ``sys.base_exec_prefix`` first.
    """
    base = Path(sys.base_exec_prefix)
    major, minor = sys.version_info[:2]
    for candidate in (base / "bin" / f"python{major}.{minor}", base / "bin" / "python3",
                      base / "python.exe", base / "python3.exe"):
        if candidate.is_file():
            return str(candidate)
    executable = Path(sys.executable or "")
    prefixes = {Path(sys.base_exec_prefix).resolve(), Path(sys.exec_prefix).resolve()}
    if executable.name.lower().startswith("python") and any(
            p in executable.resolve().parents for p in prefixes):
        return str(executable)
    return shutil.which("python3") or shutil.which("python") or "python3"


def pip_install_command(
    target_dir: str | os.PathLike, requirements: list[str], python: str | None = None
) -> list[str]:
    """argv for pip; writes the constraints file next to ``target_dir``."""
    target = Path(target_dir)
    constraints = write_constraints(target.with_name(target.name + "-constraints.txt"))
    return [
        python or python_executable(), "-m", "pip", "install",
        "--target", str(target),
        "--upgrade-strategy", "only-if-needed",
        "-c", str(constraints),
        *requirements,
    ]


class DependencyInstallDialog(QDialog):
    """Runs pip in a QProcess (QGIS stays responsive) and shows its output as it arrives."""

    finished_install = pyqtSignal(bool)

    def __init__(self, target_dir: str, requirements: list[str], parent=None, python: str | None = None):
        super().__init__(parent)
        self.target_dir = str(target_dir)
        self.requirements = list(requirements)
        self.python = python or python_executable()
        self._pending = ""
        self.setWindowTitle("rs-diffusion: install Python dependencies")
        self.resize(720, 480)

        self.info_label = info = QLabel(
            "These Python packages are missing:<br><b>{}</b><br><br>They will be installed into "
            "<code>{}</code><br>using <code>{}</code>.".format(
                html.escape(", ".join(self.requirements)), html.escape(self.target_dir), html.escape(self.python)
            )
        )
        info.setWordWrap(True)
        self.output = QPlainTextEdit()
        self.output.setReadOnly(True)
        self.output.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.install_button = buttons.addButton("Install", QDialogButtonBox.ButtonRole.ActionRole)
        self.close_button = buttons.button(QDialogButtonBox.StandardButton.Close)
        self.install_button.clicked.connect(self.start_install)
        buttons.rejected.connect(self.reject)

        layout = QVBoxLayout(self)
        for widget in (info, self.output, self.status_label, buttons):
            layout.addWidget(widget)

        self.process = QProcess(self)
        self.process.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        env = QProcessEnvironment.systemEnvironment()
        for key, value in (("PYTHONUNBUFFERED", "1"), ("PIP_PROGRESS_BAR", "off"), ("PIP_NO_INPUT", "1")):
            env.insert(key, value)
        self.process.setProcessEnvironment(env)
        self.process.readyReadStandardOutput.connect(self._read_output)
        self.process.finished.connect(self._on_finished)
        self.process.errorOccurred.connect(self._on_error)

    def start_install(self) -> None:
        if self.process.state() != QProcess.ProcessState.NotRunning:
            return
        try:
            argv = pip_install_command(self.target_dir, self.requirements, self.python)
        except Exception as exc:  # e.g. the profile folder is not writable
            self._finish(False, f"Could not prepare the installation: {exc}")
            return
        self.install_button.setEnabled(False)
        self.output.clear()
        self._pending = ""
        self.output.appendPlainText("$ " + " ".join(argv))
        self.status_label.setText("Installing… this can take several minutes.")
        self.process.start(argv[0], argv[1:])

    def _read_output(self) -> None:
        text = bytes(self.process.readAllStandardOutput()).decode("utf-8", "replace")
        *lines, self._pending = (self._pending + text).replace("\r\n", "\n").split("\n")
        for line in lines:
            self.output.appendPlainText(line)

    def _on_finished(self, exit_code: int, exit_status=QProcess.ExitStatus.NormalExit) -> None:
        self._read_output()
        if self._pending:
            self.output.appendPlainText(self._pending)
            self._pending = ""
        if exit_status == QProcess.ExitStatus.NormalExit and exit_code == 0:
            _add_to_sys_path(self.target_dir)
            self._finish(True, "Installation finished successfully." + self._restart_hint())
        elif exit_status == QProcess.ExitStatus.CrashExit:
            self._finish(False, "pip was interrupted or crashed; nothing may have been installed.")
        else:
            self._finish(False, f"pip failed with exit code {exit_code}; see the output above.")

    def _on_error(self, error) -> None:
        if error == QProcess.ProcessError.FailedToStart:  # otherwise finished() reports the outcome
            self._finish(False, f"Could not start {self.python}: {self.process.errorString()}")

    def _restart_hint(self) -> str:
        """Modules that failed halfway stay in sys.modules; only a restart clears them."""
        wanted = {_normalize(re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0]) for r in self.requirements}
        loaded = {name.partition(".")[0] for name in list(sys.modules)}
        stale = [m for m in REQUIRED_MODULES if _normalize(m) in wanted and m in loaded]
        if stale:
            return " Restart QGIS: {} was already (partially) imported.".format(", ".join(stale))
        return " The packages can be used right away."

    def _finish(self, ok: bool, message: str) -> None:
        self.install_button.setEnabled(not ok)
        self.status_label.setText(message)
        self.output.appendPlainText(message)
        self.finished_install.emit(ok)

    def reject(self) -> None:
        if self.process.state() != QProcess.ProcessState.NotRunning:
            self.process.kill()
            self.process.waitForFinished(3000)
        super().reject()

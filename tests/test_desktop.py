"""The real QGIS desktop application, under a virtual X server, with the plugin installed
exactly as the release zip installs it (into a throwaway profile).

Two QGIS sessions (about 15 s each):
- dependencies reachable (this venv, through RS_DIFFUSION_SITE_PACKAGES as metadata.txt
  documents): the plugin loads, its toolbar button opens the rs-diffusion dock with the
  "Segment" tab, the Processing provider is registered; a screenshot of the main window goes
  to tests/artifacts/desktop_dock.png (ignored by git: `make test` leaves the tree clean).
- dependencies missing (system Python only, no torch): the plugin still loads without any
  Python error and the button opens the dependency installer dialog instead of the dock.


The probe scripts below run *inside* QGIS: ``_STARTUP`` through PYQGIS_STARTUP as soon as
Python is initialised (so it sees every message logged while plugins load), ``_PROBE`` through
``--code`` once the main window is up. The probe writes a JSON report and quits QGIS.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sysconfig
from pathlib import Path

import pytest

from rs_diffusion_plugin.packaging import PLUGIN_NAME, install_into_profile

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
TIMEOUT = 240  # seconds for one whole QGIS session
SCREEN = (1600, 1000)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Runs before any plugin is loaded: records every message-log entry and keeps Python
# tracebacks from opening QGIS's *modal* stack-trace dialog (which would hang the run).
# QGIS 3.22 executes an absolute PYQGIS_STARTUP path twice: install the hooks only once.
_STARTUP = r'''
import sys, types

if "rsd_desktop_probe" not in sys.modules:
    import faulthandler, signal
    from qgis.core import QgsApplication

    faulthandler.enable(all_threads=True)  # Python stacks on a crash ...
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # ... and when the test finds QGIS stuck
    import qgis.utils

    _rsd_probe = types.ModuleType("rsd_desktop_probe")
    _rsd_probe.log = []
    _rsd_probe.stack_dialogs = []
    _rsd_probe.preloaded = sorted(m for m in ("numpy", "osgeo", "sympy", "torch") if m in sys.modules)
    sys.modules["rsd_desktop_probe"] = _rsd_probe

    def _rsd_on_message(message, tag, level, _log=_rsd_probe.log):
        _log.append({"tag": str(tag), "level": int(level), "message": str(message)})

    def _rsd_no_modal_stack_dialog(type_, value, tb, msg, pop_error=True, _seen=_rsd_probe.stack_dialogs):
        _seen.append("{}: {}".format(msg, value))

    QgsApplication.messageLog().messageReceived.connect(_rsd_on_message)
    qgis.utils.open_stack_dialog = _rsd_no_modal_stack_dialog
'''

# Runs inside QGIS after start-up (``--code``): inspects the GUI, writes the JSON report, quits.
_PROBE = r'''
import json, os, sys, traceback

from qgis.core import QgsApplication, QgsProject
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtGui import QTextDocument
from qgis.PyQt.QtWidgets import QAction, QApplication, QDockWidget, QTabWidget, QToolBar
import qgis.utils

_MODE = os.environ["RSD_DESKTOP_MODE"]
_RESULT = os.environ["RSD_DESKTOP_RESULT"]
_SHOT = os.environ["RSD_DESKTOP_SCREENSHOT"]
_RASTER = os.environ.get("RSD_DESKTOP_RASTER", "")
_W, _H = (int(v) for v in os.environ["RSD_DESKTOP_SIZE"].split("x"))
_report = {"mode": _MODE, "probe_errors": []}


def _guard(step):
    def wrapped():
        try:
            step()
        except Exception:
            _report["probe_errors"].append(traceback.format_exc())
            _finish()
    return wrapped


def _finish():
    if _report.get("finished"):
        return
    _report["finished"] = True
    try:
        import rsd_desktop_probe as probe
        _report["log"] = probe.log
        _report["stack_dialogs"] = probe.stack_dialogs
        _report["preloaded_at_startup"] = probe.preloaded
    except ImportError:
        _report["log"], _report["stack_dialogs"] = None, None
    _report["sys_path"] = list(sys.path)
    _report["qgis_python"] = {"executable": sys.executable, "base_exec_prefix": sys.base_exec_prefix,
                              "version": list(sys.version_info[:3])}
    _report["module_files"] = {m: getattr(sys.modules.get(m), "__file__", None)
                               for m in ("numpy", "sympy", "torch", "core")}
    try:
        with open(_RESULT + ".partial", "w", encoding="utf-8") as f:
            json.dump(_report, f, indent=1, default=str)
        os.replace(_RESULT + ".partial", _RESULT)
    finally:
        # Close the project while the GUI is intact: QGIS 3.22 can crash when it removes the
        # layers only while tearing down the main window after QgsApplication.exit().
        QgsProject.instance().clear()
        QgsProject.instance().setDirty(False)  # no "save project?" question
        QgsApplication.exit(0)


def _window():
    return qgis.utils.iface.mainWindow()


def _dock():
    return _window().findChild(QDockWidget, "RsDiffusionDock")


def _start():
    win = _window()
    win.resize(_W, _H)
    win.move(0, 0)
    name = "rs_diffusion_plugin"
    _report["plugin_loaded"] = name in qgis.utils.plugins
    _report["plugin_active"] = name in qgis.utils.active_plugins
    _report["plugin_class"] = type(qgis.utils.plugins.get(name)).__name__
    module = sys.modules.get(name)
    _report["plugin_file"] = getattr(module, "__file__", None)
    core = sys.modules.get("core")
    _report["core_file"] = getattr(core, "__file__", None)
    _report["torch_imported"] = "torch" in sys.modules
    action = win.findChild(QAction, "rsDiffusionAction")
    _report["action_found"] = action is not None
    toolbar = win.findChild(QToolBar, "rsDiffusionToolbar")
    _report["toolbar_found"] = toolbar is not None
    _report["toolbar_visible"] = bool(toolbar and toolbar.isVisible())
    _report["action_in_toolbar"] = bool(toolbar and action and action in toolbar.actions())
    _report["action_text"] = action.text() if action else None
    registry = QgsApplication.processingRegistry()
    _report["provider_registered"] = registry.providerById("rsdiffusion") is not None
    _report["algorithm_registered"] = registry.algorithmById("rsdiffusion:segment_raster") is not None
    _report["dock_before_trigger"] = _dock() is not None
    if _RASTER:
        layer = qgis.utils.iface.addRasterLayer(_RASTER, "scene")
        _report["raster_layer_valid"] = bool(layer and layer.isValid())
    if action is None:
        _finish()
        return
    if _MODE == "deps":
        action.trigger()
        QTimer.singleShot(2500, _guard(_inspect_dock))
    else:
        # The installer dialog runs exec_(): trigger from the event loop, inspect from a later timer.
        QTimer.singleShot(0, _guard(action.trigger))
        QTimer.singleShot(2500, _guard(_inspect_installer))


def _inspect_dock():
    dock = _dock()
    _report["dock_found"] = dock is not None
    _report["dock_visible"] = bool(dock and dock.isVisible())
    _report["dock_title"] = dock.windowTitle() if dock else None
    _report["dock_area"] = int(_window().dockWidgetArea(dock)) if dock else None
    tabs = dock.findChild(QTabWidget) if dock else None
    _report["tab_titles"] = [tabs.tabText(i) for i in range(tabs.count())] if tabs else []
    _report["current_tab"] = tabs.tabText(tabs.currentIndex()) if tabs else None
    segment = getattr(dock, "segment_tab", None)
    if segment is not None:
        _report["model_label"] = segment.model_picker.label.text()
        layer = segment.layer_combo.currentLayer()
        _report["segment_layer"] = layer.name() if layer else None
        _report["segment_device_choices"] = [segment.device_combo.itemText(i)
                                             for i in range(segment.device_combo.count())]
    _report["installer_dialogs"] = len(_installer_dialogs())
    _report["torch_imported_after_trigger"] = "torch" in sys.modules
    if segment is not None and segment.layer_combo.currentLayer() is not None:
        _run_segmentation(segment)
    else:
        _screenshot_and_finish()


def _run_segmentation(segment):
    """Press Run in the Segment tab, as a user would, and wait for the class layer."""
    from qgis.core import QgsProject

    def added(layers):
        _report["layers_added"] = [layer.name() for layer in layers]
        QTimer.singleShot(1500, _guard(_screenshot_and_finish))

    QgsProject.instance().layersAdded.connect(added)
    segment.run_button.click()
    QTimer.singleShot(120000, _guard(_screenshot_and_finish))


def _screenshot_and_finish():
    if _report.get("screenshot_saved"):
        return
    dock = _dock()
    if dock is not None and getattr(dock, "segment_tab", None) is not None:
        _report["segment_log"] = dock.segment_tab.log.toPlainText()
    _report["screenshot_saved"] = bool(_window().grab().save(_SHOT, "PNG"))
    _finish()


def _installer_dialogs():
    return [w for w in QApplication.topLevelWidgets()
            if type(w).__name__ == "DependencyInstallDialog" and w.isVisible()]


def _inspect_installer():
    dialogs = _installer_dialogs()
    _report["installer_dialogs"] = len(dialogs)
    _report["dock_found"] = _dock() is not None
    if dialogs:
        dialog = dialogs[0]
        _report["installer_title"] = dialog.windowTitle()
        _report["installer_modal"] = dialog.isModal()
        _report["installer_requirements"] = list(dialog.requirements)
        _report["installer_target"] = dialog.target_dir
        _report["installer_python"] = dialog.python
        label = dialog.info_label
        _report["installer_text"] = label.text()
        if label.textFormat() == Qt.PlainText or not Qt.mightBeRichText(label.text()):
            _report["installer_shown_text"] = label.text()
        else:  # what the user reads: the label renders its text as HTML
            document = QTextDocument()
            document.setHtml(label.text())
            _report["installer_shown_text"] = document.toPlainText()
        _report["screenshot_saved"] = bool(dialog.grab().save(_SHOT, "PNG"))
        for d in dialogs:
            d.reject()
    QTimer.singleShot(500, _guard(_after_installer))


def _after_installer():
    _report["installer_dialogs_after_close"] = len(_installer_dialogs())
    _report["dock_found_after_close"] = _dock() is not None
    _report["torch_imported"] = "torch" in sys.modules
    _finish()


QTimer.singleShot(1000, _guard(_start))
QTimer.singleShot(180000, _finish)  # never outlive the test's own timeout
'''


def _require(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.skip(f"`{program}` not found: the desktop test needs the Debian packages "
                    "xvfb (xvfb-run) and qgis (qgis.bin)")
    return path


def _venv_purelib() -> str:
    """site-packages of the Python running the tests (the venv): torch & co. for QGIS."""
    return sysconfig.get_paths()["purelib"]


def run_qgis_desktop(tmp_path: Path, mode: str, site_packages: str | None, raster: Path | None = None) -> dict:
    """Start qgis.bin under Xvfb with the plugin installed in a fresh profile; return the probe's report.

    `site_packages` goes to RS_DIFFUSION_SITE_PACKAGES, the plugin's own way to find torch & co.
    """
    xvfb_run, qgis_bin = _require("xvfb-run"), _require("qgis.bin")
    profiles = tmp_path / "profiles"
    profile = install_into_profile(profiles)
    plugin_dir = profile / "python" / "plugins" / PLUGIN_NAME
    assert (plugin_dir / "vendor" / "core").is_dir(), plugin_dir

    startup, probe = tmp_path / "startup.py", tmp_path / "probe.py"
    startup.write_text(_STARTUP, encoding="utf-8")
    probe.write_text(_PROBE, encoding="utf-8")
    result, shot = tmp_path / "result.json", tmp_path / "screenshot.png"
    home = tmp_path / "home"
    home.mkdir()

    env = {k: v for k, v in os.environ.items()
           if k not in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY", "PYTHONPATH", "PYTHONHOME",
                        "VIRTUAL_ENV", "RS_DIFFUSION_SITE_PACKAGES", "PYTHONSTARTUP", "PYQGIS_STARTUP")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_DATA_HOME=str(home / ".local" / "share"),
               XDG_CACHE_HOME=str(home / ".cache"), PYQGIS_STARTUP=str(startup), PYTHONDONTWRITEBYTECODE="1",
               RSD_DESKTOP_MODE=mode, RSD_DESKTOP_RESULT=str(result), RSD_DESKTOP_SCREENSHOT=str(shot),
               RSD_DESKTOP_SIZE="{}x{}".format(*SCREEN), RSD_DESKTOP_RASTER=str(raster or ""))
    if site_packages:
        env["RS_DIFFUSION_SITE_PACKAGES"] = site_packages

    argv = [xvfb_run, "-a", "-s", "-screen 0 {}x{}x24".format(*SCREEN),
            qgis_bin, "--noversioncheck", "--nologo", "--profiles-path", str(profiles), "--code", str(probe)]
    proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)  # own process group: Xvfb + QGIS die together on timeout
    try:
        output, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        for pid in _qgis_pids(proc.pid):  # faulthandler (see _STARTUP) prints every thread's Python stack
            os.kill(pid, signal.SIGUSR1)
        try:
            output, _ = proc.communicate(timeout=3)
        except subprocess.TimeoutExpired:
            pass
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        stage = "after the probe had finished (while QGIS was quitting)" if result.is_file() else "during the probe"
        pytest.fail(f"QGIS did not finish within {TIMEOUT} s, {stage}; output:\n{_tail(output, 200)}")
    text = output.decode("utf-8", "replace")
    assert result.is_file(), f"QGIS exited ({proc.returncode}) without a probe report; output:\n{_tail(text)}"
    report = json.loads(result.read_text(encoding="utf-8"))
    report["returncode"] = proc.returncode
    report["output"] = text
    report["screenshot"] = str(shot)
    return report


def _qgis_pids(pgid: int) -> list[int]:
    """qgis.bin processes in the process group the test started."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, _, rest = stat.read_text().rpartition(")")
            fields = rest.split()
            if head.split("(", 1)[1] == "qgis.bin" and int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return pids


def _tail(text, lines=80):
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


def python_errors(report: dict) -> list[str]:
    """Tracebacks QGIS logged ("Python error" tab) or would have shown in its stack-trace dialog."""
    errors = [e["message"] for e in report["log"] if e["tag"] == "Python error"]
    return errors + list(report["stack_dialogs"])


def plugin_criticals(report: dict) -> list[str]:
    """Critical log entries that come from or mention the plugin."""
    return [f"[{e['tag']}] {e['message']}" for e in report["log"]
            if e["level"] >= 2 and ("rs-diffusion" in e["tag"] or "rs_diffusion" in e["message"]
                                    or "rs-diffusion" in e["message"])]


def assert_png(path: Path, min_size=(800, 500)) -> tuple[int, int]:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= min_size[0] and height >= min_size[1], (width, height)
    assert len(data) > 20_000, f"suspiciously small screenshot ({len(data)} bytes): blank window?"
    return width, height


def _check_common(report: dict) -> None:
    assert not report["probe_errors"], "\n".join(report["probe_errors"])
    assert report["log"] is not None, "the PYQGIS_STARTUP hook did not run"
    assert report["plugin_loaded"] and report["plugin_active"], (
        "\n\n".join(python_errors(report)) or _tail(report["output"]))
    assert report["plugin_class"] == "RsDiffusionPlugin"
    assert "/python/plugins/rs_diffusion_plugin/" in report["plugin_file"], report["plugin_file"]
    assert report["action_found"] and report["toolbar_found"] and report["action_in_toolbar"]
    assert report["toolbar_visible"]
    assert report["returncode"] == 0, f"QGIS exited with {report['returncode']}:\n{_tail(report['output'])}"
    assert not python_errors(report), "\n\n".join(python_errors(report))
    assert not plugin_criticals(report), "\n".join(plugin_criticals(report))


def _shadowing_failure(report: dict) -> str:
    """A regression seen before: RS_DIFFUSION_SITE_PACKAGES went to the *end* of sys.path, so an older
    copy in the system's dist-packages (Debian's sympy 1.11) won over the one torch needs."""
    hits = [e for e in python_errors(report) if "Error" in e and "/dist-packages/" in e and "rs_diffusion_plugin" in e]
    if not hits:
        return ""
    last = hits[0].strip().splitlines()[-1]
    return ("a package in the system's dist-packages shadows the copy torch & co. need from "
            "RS_DIFFUSION_SITE_PACKAGES: check the sys.path order set by rs_diffusion_plugin/dependencies.py "
            f"(_add_to_sys_path): {last}")


@pytest.fixture(scope="module")
def desktop_with_deps(tmp_path_factory):
    """One QGIS session with torch & co. reachable and a raster layer in the project; button triggered."""
    tmp_path = tmp_path_factory.mktemp("desktop_deps")
    raster = None
    try:  # a layer in the project makes the screenshot (and the Segment tab's layer box) meaningful
        from tests.conftest import make_scene_raster
        raster = make_scene_raster(tmp_path / "data", size=(256, 320))[0]
    except Exception:  # the scene generator is not what these tests are about
        raster = None
    report = run_qgis_desktop(tmp_path, "deps", _venv_purelib(), raster)
    report["raster"] = str(raster) if raster else None
    return report


@pytest.fixture(scope="module")
def desktop_without_deps(tmp_path_factory):
    """One QGIS session on the system Python only (no torch); button triggered."""
    return run_qgis_desktop(tmp_path_factory.mktemp("desktop_nodeps"), "nodeps", None)


def test_desktop_plugin_opens_dock(desktop_with_deps):
    report = desktop_with_deps
    reason = _shadowing_failure(report)
    if reason:
        pytest.fail(reason)
    _check_common(report)
    assert report["provider_registered"], "Processing provider 'rsdiffusion' missing"
    assert report["algorithm_registered"], "algorithm 'rsdiffusion:segment_raster' missing"
    assert not report["dock_before_trigger"]
    assert report["dock_found"] and report["dock_visible"], report
    assert report["dock_title"] == "rs-diffusion"
    assert "Segment" in report["tab_titles"], report["tab_titles"]
    assert report["current_tab"] == "Segment"
    assert report["model_label"], "the Segment tab says nothing about the model"
    assert report["installer_dialogs"] == 0
    assert "/vendor/core/" in report["core_file"], report["core_file"]  # the bundled copy, like the zip
    if report["raster"]:
        assert report["raster_layer_valid"]
        assert report["segment_layer"] == "scene"
        # Run pressed in the real desktop: the task finishes and adds the styled class layer
        assert report.get("layers_added") == ["scene_classes"], report.get("segment_log")
        assert "Added 'scene_classes'" in report["segment_log"]

    assert report["screenshot_saved"]
    assert_png(report["screenshot"], min_size=(SCREEN[0] - 50, SCREEN[1] - 100))
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(report["screenshot"], ARTIFACTS / "desktop_dock.png")


def test_desktop_plugin_without_dependencies_offers_installer(desktop_without_deps):
    report = desktop_without_deps
    _check_common(report)
    assert report["torch_imported"] is False
    assert not report["provider_registered"], "no Processing provider without torch & co."
    warnings = [e["message"] for e in report["log"] if e["tag"] == "rs-diffusion"]
    assert any("missing Python packages" in m and "torch" in m for m in warnings), warnings
    assert report["installer_dialogs"] == 1, report
    assert report["installer_title"] == "rs-diffusion: install Python dependencies"
    assert report["installer_modal"]
    assert any(r.startswith("torch") for r in report["installer_requirements"]), report["installer_requirements"]
    assert report["installer_target"].endswith("/profiles/default/python/rs_diffusion_deps")
    assert not report["dock_found"] and not report["dock_found_after_close"]
    assert report["installer_dialogs_after_close"] == 0
    assert report["screenshot_saved"]
    assert_png(report["screenshot"], min_size=(400, 300))


def test_installer_dialog_shows_every_requirement(desktop_without_deps):
    """The dialog's label is rich text: a requirement such as "torch>=2.1,<=2.14.1" must reach the user intact."""
    report = desktop_without_deps
    if report.get("installer_shown_text") is None:
        pytest.fail("no installer dialog was seen")
    shown = " ".join(report["installer_shown_text"].split())
    lost = [r for r in report["installer_requirements"] if r not in shown]
    assert not lost, f"the user reads {shown[:160]!r}... and never sees {lost}"
    assert report["installer_target"] in report["installer_shown_text"].replace("\n", "")


def test_installer_uses_the_python_qgis_runs_on(desktop_without_deps):
    """pip must run on the interpreter embedded in QGIS, not whatever `python3` comes first on PATH."""
    report = desktop_without_deps
    qgis_python, installer = report["qgis_python"], report.get("installer_python")
    if not installer:
        pytest.fail("no installer dialog was seen")
    probe = subprocess.run([installer, "-c", "import sys; print(sys.base_exec_prefix); print(*sys.version_info[:2])"],
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, f"{installer} does not run: {probe.stderr}"
    prefix, version = probe.stdout.split("\n")[:2]
    same_prefix = os.path.realpath(prefix) == os.path.realpath(qgis_python["base_exec_prefix"])
    same_version = version.split() == [str(v) for v in qgis_python["version"][:2]]
    assert same_prefix and same_version, (
        f"pip would run on {installer} (prefix {prefix}, Python {version}) instead of QGIS's own Python "
        f"(prefix {qgis_python['base_exec_prefix']}, {qgis_python['version'][:2]})")

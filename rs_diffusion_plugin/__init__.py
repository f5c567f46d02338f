"""rs-diffusion QGIS plugin: entry point called by QGIS.

Only standard-library and QGIS imports happen here: torch & co. may be missing inside
QGIS, and the plugin must then offer to install them instead of failing to load.
"""
import sys
from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent
# In the plugin zip, core/ and resources/ are bundled under vendor/ (see packaging.py).
VENDOR_DIR = PLUGIN_DIR / "vendor"


def _use_bundled_core() -> None:
    if (VENDOR_DIR / "core").is_dir() and str(VENDOR_DIR) not in sys.path:
        sys.path.insert(0, str(VENDOR_DIR))


def _keep_triton_out() -> None:
    """torch imports triton when it is installed (it comes with Linux CUDA wheels). Its
    libtriton.so carries its own LLVM, whose start-up code crashes QGIS once Mesa's LLVM is
    loaded for the map canvas. We never compile kernels, so make `import triton` fail and
    torch treats it as absent."""
    sys.modules.setdefault("triton", None)


def classFactory(iface):  # noqa: N802 (name fixed by QGIS)
    _use_bundled_core()
    _keep_triton_out()
    from rs_diffusion_plugin.plugin import RsDiffusionPlugin
    return RsDiffusionPlugin(iface)

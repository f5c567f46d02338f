"""Build the installable plugin folder and zip (`make package`).

Layout of the zip: one folder `rs_diffusion_plugin/` with the plugin code, metadata.txt,
LICENSE, icon.svg, and `vendor/core` + `vendor/resources` (the library and starter models),
so the plugin runs with only third-party packages (torch & co.) installed.
"""
from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLUGIN_NAME = "rs_diffusion_plugin"
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "packaging.py", "*.partial*")


def build_plugin_dir(destination: str | Path) -> Path:
    """Write the plugin folder to `destination/rs_diffusion_plugin` (replacing it)."""
    target = Path(destination) / PLUGIN_NAME
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(REPO / PLUGIN_NAME, target, ignore=_SKIP)
    shutil.copytree(REPO / "core", target / "vendor" / "core", ignore=_SKIP)
    shutil.copytree(REPO / "resources", target / "vendor" / "resources", ignore=_SKIP)
    for name in ("metadata.txt", "LICENSE"):
        shutil.copy2(REPO / name, target / name)
    shutil.copy2(REPO / "resources" / "icons" / "rs_diffusion.svg", target / "icon.svg")
    return target


def build_zip(zip_path: str | Path) -> Path:
    zip_path = Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    staging = zip_path.parent / ".plugin_staging"
    folder = build_plugin_dir(staging)
    tmp = zip_path.with_suffix(".zip.partial")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, path.relative_to(staging).as_posix())
    tmp.replace(zip_path)
    shutil.rmtree(staging)
    return zip_path


def install_into_profile(profiles_dir: str | Path, profile: str = "default", zip_path: str | Path | None = None
                         ) -> Path:
    """Install the plugin into a QGIS profile (from a release zip if given) and enable it,
    as the plugin manager would."""
    base = Path(profiles_dir) / "profiles" / profile
    plugins = base / "python" / "plugins"
    if zip_path is None:
        build_plugin_dir(plugins)
    else:
        plugins.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(plugins)
    ini = base / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    ini.write_text(f"[PythonPlugins]\n{PLUGIN_NAME}=true\n", encoding="utf-8")
    return base


if __name__ == "__main__":
    print(build_zip(sys.argv[1] if len(sys.argv) > 1 else REPO / "dist" / f"{PLUGIN_NAME}.zip"))

"""Build the two release artefacts (`make package`): the plugin ZIP and the models pack.

The plugin ZIP is what the QGIS plugin repository takes (at most 25,000,000 bytes): one folder
`rs_diffusion_plugin/` with the plugin code, metadata.txt, LICENSE, icon.svg, and `vendor/core` +
`vendor/resources` (the library, icons; no weights), so the plugin runs with only third-party packages
(torch & co.) installed. The starter models travel as `rs_diffusion_models-<version>.zip`
(core.model_pack), which the user installs into their model library from the dock.
"""
from __future__ import annotations

import configparser
import shutil
import sys
import zipfile
from pathlib import Path

from core.catalog import STARTER_MODELS_DIR, STARTERS_FOLDER
from core.model_pack import build_pack, pack_file_name
from rs_diffusion_plugin.library import model_library_dir

REPO = Path(__file__).resolve().parent.parent
PLUGIN_NAME = "rs_diffusion_plugin"
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "packaging.py", "*.partial*")
_SKIP_RESOURCES = shutil.ignore_patterns("__pycache__", "*.pyc", "models", "samples")   # weights and demo data


def plugin_version() -> str:
    parser = configparser.ConfigParser()
    parser.read(REPO / "metadata.txt", encoding="utf-8")
    return parser["general"]["version"]


def build_plugin_dir(destination: str | Path) -> Path:
    """Write the plugin folder to `destination/rs_diffusion_plugin` (replacing it)."""
    target = Path(destination) / PLUGIN_NAME
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(REPO / PLUGIN_NAME, target, ignore=_SKIP)
    shutil.copytree(REPO / "core", target / "vendor" / "core", ignore=_SKIP)
    shutil.copytree(REPO / "training", target / "vendor" / "training", ignore=_SKIP)   # the Train algorithms
    shutil.copytree(REPO / "resources", target / "vendor" / "resources", ignore=_SKIP_RESOURCES)
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


def build_models_pack(dist_dir: str | Path, version: str | None = None) -> Path:
    """The repository's starter models as `dist_dir/rs_diffusion_models-<version>.zip`."""
    version = version or plugin_version()
    return build_pack(STARTER_MODELS_DIR, Path(dist_dir) / pack_file_name(version), version)


def build_release(dist_dir: str | Path) -> list[Path]:
    """Both artefacts of `make package`: the plugin ZIP and the models pack."""
    dist_dir = Path(dist_dir)
    return [build_zip(dist_dir / f"{PLUGIN_NAME}.zip"), build_models_pack(dist_dir)]


def install_into_profile(profiles_dir: str | Path, profile: str = "default", zip_path: str | Path | None = None
                         ) -> Path:
    """Install the plugin into a QGIS profile (from a release zip if given) and enable it, as the plugin
    manager would. A developer profile (no zip) also gets the repository's starter models in its model
    library; a release zip comes alone, as from the plugin repository (core.model_pack.install_pack adds
    the models pack)."""
    base = Path(profiles_dir) / "profiles" / profile
    plugins = base / "python" / "plugins"
    if zip_path is None:
        build_plugin_dir(plugins)
        shutil.copytree(STARTER_MODELS_DIR, model_library_dir(base) / STARTERS_FOLDER, dirs_exist_ok=True)
    else:
        plugins.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(plugins)
    ini = base / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    ini.write_text(f"[PythonPlugins]\n{PLUGIN_NAME}=true\n", encoding="utf-8")
    return base


if __name__ == "__main__":
    for artefact in build_release(sys.argv[1] if len(sys.argv) > 1 else REPO / "dist"):
        print(f"{artefact}  {artefact.stat().st_size:,} bytes")

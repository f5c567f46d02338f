"""Where a QGIS profile keeps the user model library (standard library only: packaging uses it outside QGIS)."""
from __future__ import annotations

from pathlib import Path


def model_library_dir(profile_dir: str | Path) -> Path:
    """The user model library of a QGIS profile folder: the installed models pack (starters/) and the user's own
    models; the plugin hands it to core.catalog.set_model_library at start."""
    return Path(profile_dir) / "rs_diffusion" / "models"

"""What the plugin can list before any model is loaded: where resources and models live, which model a task
uses when the user chose none, and the device choices. Imports nothing heavy, so QGIS starts fast.

Where a model is looked for, first match wins (the one place this order is written down):
  1. the folder the user chose (an existing folder);
  2. the user model library: `<library>/<name>/` (the user's own and fine-tuned models);
  3. the installed models pack: `<library>/starters/<name>/` (written by core.model_pack);
  4. the repository's `resources/models/<name>/` (a developer checkout; absent from the plugin ZIP).
`name` is the task's starter (STARTER_MODELS) when the user chose nothing, or the name they typed.

The library is a folder the caller sets once with `set_model_library` (the plugin: `<QGIS profile>/
rs_diffusion/models` at start); core never imports qgis, and without a library only 1 and 4 apply, so a
fresh clone runs `make demo` and `make test` on the repository's starters.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

RESOURCES_DIR = Path(__file__).resolve().parent.parent / "resources"
STARTER_MODELS_DIR = RESOURCES_DIR / "models"
STARTERS_FOLDER = "starters"   # the installed pack's folder inside the library
CARD_FILE = "model.json"       # core.checkpoint.CARD_NAME, repeated here so listing models never imports torch
# The shipped default model of each task, trained by `make starter-models`.
STARTER_MODELS = {"segmentation": "segmentation_starter", "satsynth": "satsynth_starter",
                  "satsynth-sr": "satsynth_sr_starter", "idgbr": "idgbr_starter", "saross": "saross_starter",
                  "sar-jointnet": "sar_jointnet_starter", "fusion-prior": "fusion_prior_starter",
                  "changedet": "changedet_starter", "fcf": "fcf_starter", "rdfmig": "rdfmig_starter"}
DEVICE_CHOICES = ("auto", "cuda", "cpu")

_library: Path | None = None


@dataclass
class LibraryModel:
    """A model a picker can offer: the name on its card, its folder and a one-line summary of the card."""
    name: str
    path: str
    summary: str


def set_model_library(folder: str | Path | None) -> None:
    """Use `folder` as the user model library (None: no library, only chosen folders and the repository)."""
    global _library
    _library = Path(folder) if folder else None


def model_library() -> Path | None:
    return _library


def model_search_path() -> list[Path]:
    """The folders holding model folders, in the order a name is looked up."""
    library = [_library, _library / STARTERS_FOLDER] if _library is not None else []
    return [*library, STARTER_MODELS_DIR]


def find_model(name: str) -> Path | None:
    """The first `<folder>/<name>` with a card along the search path, or None."""
    if not name or name != Path(name).name or name == STARTERS_FOLDER:
        return None
    for folder in model_search_path():
        if (folder / name / CARD_FILE).is_file():
            return folder / name
    return None


def starter_model_dir(task: str) -> Path:
    """Where the task's starter model is (the installed pack's copy wins over the repository's). Where it is
    nowhere yet: where the pack will put it (or, without a library, the repository's folder), so that a
    default shown to the user names it."""
    name = STARTER_MODELS[task]
    found = find_model(name)
    if found is not None:
        return found
    return _library / STARTERS_FOLDER / name if _library is not None else STARTER_MODELS_DIR / name


def resolve_model_dir(model_dir: str, task: str) -> str:
    """The model folder a pipeline loads, in the order of the module docstring.

    A bare name (no folder part) is looked up in the library, the pack and the repository. A starter's
    folder that does not exist where the user's settings say (a Processing default or a saved model from
    before the pack was installed) is looked up by name too, and when it is nowhere the error says how to
    install it. Anything else is returned unchanged, so that loading it says what is wrong with it.
    """
    if model_dir and Path(model_dir).is_dir():
        return model_dir
    starter = STARTER_MODELS[task]
    name = Path(model_dir).name if model_dir else starter
    if not model_dir or name == model_dir or name == starter:
        found = find_model(name)
        if found is not None:
            return str(found)
    if model_dir and name != starter:
        return model_dir
    from core.checkpoint import ModelError   # torch is loaded by then: the pipeline asking loads it
    missing = f" ('{model_dir}' does not exist)" if model_dir else ""
    raise ModelError(f"No '{task}' model is installed{missing}: install the starter models pack "
                     f"(rs_diffusion_models-<version>.zip, \"Install starter models...\" in the rs-diffusion dock) "
                     f"or choose a model folder.")


def read_card(folder: str | Path) -> dict | None:
    """The card of a model folder as JSON, or None when there is no readable card (not validated)."""
    try:
        card = json.loads((Path(folder) / CARD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return card if isinstance(card, dict) else None


def card_summary(card: dict) -> str:
    """What a picker shows under a model: task, classes, bands and ground resolution."""
    details = [f"{card.get('task', '?')} model"]
    classes = [c.get("name", "") for c in card.get("classes") or [] if isinstance(c, dict)]
    if classes:
        details.append("classes " + ", ".join(classes))
    if card.get("bands"):
        details.append("bands " + ", ".join(card["bands"]))
    if card.get("ground_resolution"):
        details.append(f"{card['ground_resolution']:g} m ground resolution")
    return "; ".join(details)


def models_for_task(task: str) -> list[LibraryModel]:
    """Every model of `task` the search path holds, each name once (the first along the search path, as
    `find_model` would pick it): the task's default model first, then the others by name."""
    seen: set[str] = set()
    found = []
    for folder in model_search_path():
        if not folder.is_dir():
            continue
        for model_dir in sorted(folder.iterdir()):
            card = read_card(model_dir) if model_dir.is_dir() and model_dir.name != STARTERS_FOLDER else None
            if card is None or model_dir.name in seen:
                continue
            seen.add(model_dir.name)
            if card.get("task") == task:
                found.append(LibraryModel(str(card.get("name") or model_dir.name), str(model_dir),
                                          card_summary(card)))
    default = str(find_model(STARTER_MODELS.get(task, ""))) if task in STARTER_MODELS else ""
    return sorted(found, key=lambda model: (model.path != default, model.name.lower()))

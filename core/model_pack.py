"""The models pack: the starter models as one verified download, kept out of the plugin ZIP.

A pack is a ZIP holding `manifest.json` and one folder per model. The manifest lists every file with its
SHA-256 and size. `install_pack` extracts into a staging folder inside the library, checks every byte
against the manifest, and only then moves the models into `<library>/starters` (core.catalog looks there),
so a refused, failed or cancelled install leaves the library exactly as it was. Nothing is downloaded unless
the caller passes a URL.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import tempfile
import urllib.error
import urllib.request
import uuid
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from core.catalog import STARTERS_FOLDER, card_summary, model_library, read_card
from core.checkpoint import ModelError
from core.progress import Progress, SubProgress

PACK_NAME = "rs_diffusion_models"
MANIFEST_NAME = "manifest.json"
PACK_FORMAT = 1
CHUNK = 1 << 20


@dataclass
class PackFile:
    path: str     # "<model name>/<file>", as stored in the ZIP
    sha256: str
    size: int


@dataclass
class PackModel:
    name: str     # the folder name, which core.catalog looks models up by
    task: str
    version: str
    title: str    # the name on the model's card
    summary: str  # core.catalog.card_summary of the card
    files: list[PackFile] = field(default_factory=list)


@dataclass
class Manifest:
    version: str
    models: list[PackModel]
    name: str = PACK_NAME
    format: int = PACK_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        """The manifest of a pack, refused unless every model name and file path is a plain relative one."""
        try:
            data = json.loads(text)
            models = [PackModel(**{**m, "files": [PackFile(**f) for f in m["files"]]}) for m in data.pop("models")]
            manifest = cls(models=models, **data)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ModelError(f"The models pack's {MANIFEST_NAME} is not a valid manifest ({exc}); nothing was "
                             "installed.") from exc
        if manifest.format > PACK_FORMAT:
            raise ModelError(f"The models pack has format {manifest.format}; this plugin reads up to "
                             f"{PACK_FORMAT}. Update rs-diffusion.")
        for model in manifest.models:
            if model.name != PurePosixPath(model.name).name or model.name.startswith(".") \
                    or model.name == STARTERS_FOLDER:
                raise ModelError(f"The models pack's manifest names a model '{model.name}', which is not a plain "
                                 "folder name; nothing was installed.")
            for entry in model.files:
                parts = PurePosixPath(entry.path).parts
                if len(parts) < 2 or parts[0] != model.name or ".." in parts or "\\" in entry.path:
                    raise ModelError(f"The models pack's manifest lists '{entry.path}' for model '{model.name}'; "
                                     f"its files must lie in the folder '{model.name}/'. Nothing was installed.")
        return manifest


@dataclass
class InstallResult:
    folder: Path          # <library>/starters
    version: str
    models: list[str]     # the installed model folder names


def pack_file_name(version: str) -> str:
    return f"{PACK_NAME}-{version}.zip"


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def build_pack(models_dir: str | Path, zip_path: str | Path, version: str) -> Path:
    """Write every model folder of `models_dir` (a folder with a card) and the manifest to `zip_path`."""
    models_dir, zip_path = Path(models_dir), Path(zip_path)
    models = []
    for folder in sorted(p for p in models_dir.iterdir() if p.is_dir()):
        card = read_card(folder)
        if card is None:
            continue
        files = [PackFile(f"{folder.name}/{p.relative_to(folder).as_posix()}", _sha256_of(p), p.stat().st_size)
                 for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")]
        models.append(PackModel(folder.name, card.get("task", ""), version, card.get("name", folder.name),
                                card_summary(card), files))
    if not models:
        raise ModelError(f"'{models_dir}' holds no model folders (a folder with model.json): no pack written.")
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    partial = zip_path.with_name(zip_path.name + ".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MANIFEST_NAME, Manifest(version, models).to_json())
        for model in models:
            for entry in model.files:
                archive.write(models_dir / entry.path, entry.path)
    partial.replace(zip_path)
    return zip_path


def is_url(source: str) -> bool:
    return str(source).lower().startswith(("http://", "https://"))


def installed_version(library: str | Path | None = None) -> str:
    """The version of the pack installed in the library, or "" when none is."""
    library = Path(library) if library else model_library()
    try:
        return Manifest.from_json((library / STARTERS_FOLDER / MANIFEST_NAME).read_text(encoding="utf-8")).version
    except (OSError, TypeError, ModelError):
        return ""


def install_pack(source: str | Path, library: str | Path | None = None, progress: Progress | None = None
                 ) -> InstallResult:
    """Install the pack at `source` (a local file, or an http(s) URL the user typed) into the library's
    `starters` folder, replacing an installed pack only once the new one is fully verified."""
    progress = progress or Progress()
    library = Path(library) if library else model_library()
    if library is None:
        raise ModelError("No model library is set: the models pack has nowhere to go.")
    library.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".installing-", dir=library))
    try:
        if is_url(str(source)):
            pack = staging / "download.zip"
            _download(str(source), pack, SubProgress(progress, 0.0, 0.5))
            verify_progress = SubProgress(progress, 0.5, 1.0)
        else:
            pack = Path(source)
            if not pack.is_file():
                raise ModelError(f"Models pack '{source}' not found.")
            verify_progress = progress
        manifest = _extract_verified(pack, staging / STARTERS_FOLDER, verify_progress)
        (staging / STARTERS_FOLDER / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
        progress.check()   # the last moment a cancel leaves the library untouched
        target = _move_into_place(staging / STARTERS_FOLDER, library)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    progress.set_fraction(1.0)
    progress.info(f"Installed models pack {manifest.version} ({len(manifest.models)} models) into {target}.")
    return InstallResult(target, manifest.version, [model.name for model in manifest.models])


def _download(url: str, destination: Path, progress: Progress) -> None:
    received, expected = 0, None
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(destination, "wb") as out:
            length = response.headers.get("Content-Length", "")
            expected = int(length) if length.isdigit() else None
            while chunk := response.read(CHUNK):
                out.write(chunk)
                received += len(chunk)
                if expected:
                    progress.set_fraction(min(received / expected, 1.0))
                progress.check()
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ModelError(f"Could not download the models pack from {url}: {reason}. Nothing was installed.") \
            from exc
    if expected is not None and received != expected:
        raise ModelError(f"The download from {url} stopped after {received} of {expected} bytes: the models pack "
                         "is incomplete. Nothing was installed; try again.")


def _extract_verified(pack: Path, destination: Path, progress: Progress) -> Manifest:
    """Extract `pack` into `destination`, refusing it unless its files are exactly those of its manifest,
    byte for byte (size and SHA-256), and every model's card is of the task the manifest says."""
    damaged = f"The models pack '{pack.name}' is damaged (a truncated download or an altered file?)"
    try:
        with zipfile.ZipFile(pack) as archive:
            stored = {info.filename: info for info in archive.infolist() if not info.is_dir()}
            if MANIFEST_NAME not in stored:
                raise ModelError(f"'{pack.name}' is not a models pack: it has no {MANIFEST_NAME}. Nothing was "
                                 "installed.")
            manifest = Manifest.from_json(archive.read(MANIFEST_NAME).decode("utf-8", "replace"))
            listed = {entry.path: entry for model in manifest.models for entry in model.files}
            unlisted = sorted(set(stored) - set(listed) - {MANIFEST_NAME})
            if unlisted:
                raise ModelError(f"The models pack holds '{unlisted[0]}', which its manifest does not list: the pack "
                                 "was altered. Nothing was installed.")
            missing = sorted(set(listed) - set(stored))
            if missing:
                raise ModelError(f"The models pack's manifest lists '{missing[0]}', which the pack does not hold. "
                                 "Nothing was installed.")
            total, done = sum(entry.size for entry in listed.values()), 0
            for path, entry in listed.items():
                _extract_one(archive, path, entry, destination / path, progress, done, total)
                done += entry.size
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise ModelError(f"{damaged}: {exc}. Nothing was installed.") from exc
    for model in manifest.models:
        card = read_card(destination / model.name)
        if card is None or card.get("task") != model.task:
            raise ModelError(f"The models pack's model '{model.name}' has no '{model.task}' model card. Nothing "
                             "was installed.")
    return manifest


def _extract_one(archive: zipfile.ZipFile, path: str, entry: PackFile, target: Path, progress: Progress,
                 done: int, total: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    with archive.open(path) as source, open(target, "wb") as out:
        while chunk := source.read(CHUNK):
            size += len(chunk)
            if size > entry.size:
                break   # never write more than the manifest promised (a swapped or inflated file)
            digest.update(chunk)
            out.write(chunk)
            progress.set_fraction((done + size) / total if total else 1.0)
            progress.check()
    if size != entry.size:
        raise ModelError(f"'{path}' in the models pack is {'larger' if size > entry.size else 'smaller'} than its "
                         f"manifest says ({entry.size} bytes): the pack was altered. Nothing was installed.")
    if digest.hexdigest() != entry.sha256:
        raise ModelError(f"'{path}' in the models pack does not match its SHA-256 in the manifest: the file was "
                         "altered or damaged. Nothing was installed.")


def _move_into_place(staged: Path, library: Path) -> Path:
    """Replace `<library>/starters` by `staged` with renames on one file system: either the old pack or the
    new one is there, never a mix."""
    target = library / STARTERS_FOLDER
    previous = library / f".starters-replaced-{uuid.uuid4().hex}"
    had_previous = target.exists()
    if had_previous:
        target.rename(previous)
    try:
        staged.rename(target)
    except OSError:
        if had_previous:
            previous.rename(target)
        raise
    if had_previous:
        shutil.rmtree(previous, ignore_errors=True)
    return target

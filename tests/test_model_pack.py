"""The models pack: built from model folders, installed into a model library from a file or from a local HTTP
server, every byte checked against the manifest first; a pack with one altered byte, a truncated download, an
unlisted or a missing file is refused and leaves the library as it was. And the one order models are found in:
explicit folder > user library > installed pack > the repository's resources/models."""
from __future__ import annotations

import hashlib
import json
import shutil
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from core import catalog
from core.catalog import (STARTER_MODELS_DIR, find_model, models_for_task, resolve_model_dir, set_model_library,
                          starter_model_dir)
from core.checkpoint import ModelError
from core.model_pack import MANIFEST_NAME, Manifest, build_pack, install_pack, installed_version
from core.progress import Cancelled, Progress

MODELS = ("fcf_starter", "changedet_starter")   # the two smallest starters: 2 MB


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("models")
    for name in MODELS:
        shutil.copytree(STARTER_MODELS_DIR / name, models / name)
    return build_pack(models, tmp_path_factory.mktemp("dist") / "rs_diffusion_models-9.9.zip", "9.9")


@pytest.fixture
def library(tmp_path):
    folder = tmp_path / "library"
    set_model_library(folder)
    yield folder
    set_model_library(None)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rewrite(pack: Path, out: Path, replace: dict[str, bytes | None] = (), add: dict[str, bytes] = ()) -> Path:
    """A copy of `pack` as a valid ZIP with members replaced (None: left out) or added."""
    replace, add = dict(replace), dict(add)
    with zipfile.ZipFile(pack) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            data = replace.get(name, src.read(name)) if name in replace else src.read(name)
            if data is not None:
                dst.writestr(name, data)
        for name, data in add.items():
            dst.writestr(name, data)
    return out


def untouched(library: Path) -> list[str]:
    """What is in the library, hidden staging folders included."""
    return sorted(p.relative_to(library).as_posix() for p in library.rglob("*")) if library.exists() else []


class Serve:
    """A pack on http://127.0.0.1:<port>/ from a thread; `truncate` sends only the first half of it while
    announcing its full length."""

    def __init__(self, folder: Path, truncate: bool = False):
        handler = partial(TruncatingHandler if truncate else QuietHandler, directory=str(folder))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class TruncatingHandler(QuietHandler):
    def do_GET(self):  # noqa: N802
        data = Path(self.translate_path(self.path)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[:len(data) // 2])
        self.close_connection = True


class Recording(Progress):
    def __init__(self, cancel_after: int | None = None):
        self.fractions: list[float] = []
        self.cancel_after = cancel_after

    def set_fraction(self, fraction: float) -> None:
        self.fractions.append(fraction)

    def is_canceled(self) -> bool:
        return self.cancel_after is not None and len(self.fractions) >= self.cancel_after


def test_manifest_lists_every_file_with_its_sha256_size_task_and_card_summary(pack):
    with zipfile.ZipFile(pack) as archive:
        manifest = Manifest.from_json(archive.read(MANIFEST_NAME).decode())
        stored = sorted(n for n in archive.namelist() if n != MANIFEST_NAME)
    assert manifest.version == "9.9" and [m.name for m in manifest.models] == sorted(MODELS)
    assert sorted(f.path for m in manifest.models for f in m.files) == stored
    fcf = next(m for m in manifest.models if m.name == "fcf_starter")
    assert fcf.task == "fcf" and fcf.version == "9.9" and fcf.summary.startswith("fcf model; bands ")
    card = fcf.files[0]
    assert card.path == "fcf_starter/model.json"
    assert card.sha256 == sha256(STARTER_MODELS_DIR / "fcf_starter" / "model.json")
    assert card.size == (STARTER_MODELS_DIR / "fcf_starter" / "model.json").stat().st_size


def test_install_from_a_file_puts_the_models_in_the_library(pack, library):
    progress = Recording()
    result = install_pack(pack, library, progress)
    assert result.folder == library / "starters" and result.version == "9.9" and sorted(result.models) == sorted(MODELS)
    for name in MODELS:
        for original in (STARTER_MODELS_DIR / name).iterdir():
            assert sha256(library / "starters" / name / original.name) == sha256(original)
    assert installed_version(library) == "9.9"
    assert progress.fractions[-1] == 1.0 and progress.fractions == sorted(progress.fractions)
    assert [p.name for p in library.iterdir()] == ["starters"]   # no staging folder left
    # the installed pack now comes before the repository's copy
    assert starter_model_dir("fcf") == library / "starters" / "fcf_starter"
    assert resolve_model_dir("", "changedet") == str(library / "starters" / "changedet_starter")
    assert [m.path for m in models_for_task("fcf")] == [str(library / "starters" / "fcf_starter")]


def test_install_from_a_url_served_on_127_0_0_1(pack, library):
    progress = Recording()
    with Serve(pack.parent) as url:
        result = install_pack(f"{url}/{pack.name}", library, progress)
    assert sorted(result.models) == sorted(MODELS)
    assert sha256(library / "starters" / "fcf_starter" / "model.safetensors") == \
        sha256(STARTER_MODELS_DIR / "fcf_starter" / "model.safetensors")
    assert any(0 < f <= 0.5 for f in progress.fractions), "the download reports its progress"
    assert progress.fractions[-1] == 1.0
    assert [p.name for p in library.iterdir()] == ["starters"]


def test_a_truncated_download_is_refused(pack, library):
    with Serve(pack.parent, truncate=True) as url, pytest.raises(ModelError, match="stopped after .* of .* bytes"):
        install_pack(f"{url}/{pack.name}", library)
    assert untouched(library) == []


def test_an_unreachable_url_is_a_clear_error(library):
    with Serve(library.parent) as url, pytest.raises(ModelError, match="Could not download the models pack from"):
        install_pack(f"{url}/no_such_pack.zip", library)
    assert untouched(library) == []


def test_a_pack_with_one_altered_byte_is_refused(pack, library, tmp_path):
    weights = "fcf_starter/model.safetensors"
    with zipfile.ZipFile(pack) as archive:
        data = bytearray(archive.read(weights))
    data[len(data) // 2] ^= 1
    tampered = rewrite(pack, tmp_path / "tampered.zip", {weights: bytes(data)})   # a valid ZIP, CRC and all
    with pytest.raises(ModelError, match=f"'{weights}' .* does not match its SHA-256"):
        install_pack(tampered, library)
    assert untouched(library) == []
    damaged = tmp_path / "damaged.zip"   # one byte flipped in the file itself, as a bad disk or transfer would
    raw = bytearray(pack.read_bytes())
    raw[len(raw) // 2] ^= 1
    damaged.write_bytes(raw)
    with pytest.raises(ModelError, match="damaged|does not match its SHA-256"):
        install_pack(damaged, library)
    assert untouched(library) == []


def test_a_file_the_manifest_does_not_list_is_refused(pack, library, tmp_path):
    extra = rewrite(pack, tmp_path / "extra.zip", add={"fcf_starter/extra.py": b"print('hello')"})
    with pytest.raises(ModelError, match="'fcf_starter/extra.py', which its manifest does not list"):
        install_pack(extra, library)
    assert untouched(library) == []


def test_a_listed_file_missing_from_the_pack_is_refused(pack, library, tmp_path):
    missing = rewrite(pack, tmp_path / "missing.zip", {"changedet_starter/model.safetensors": None})
    with pytest.raises(ModelError, match="lists 'changedet_starter/model.safetensors', which the pack does not hold"):
        install_pack(missing, library)
    assert untouched(library) == []


def test_a_manifest_pointing_outside_its_folder_is_refused(pack, library, tmp_path):
    with zipfile.ZipFile(pack) as archive:
        manifest = json.loads(archive.read(MANIFEST_NAME))
    manifest["models"][0]["files"][0]["path"] = "../../evil.json"
    evil = rewrite(pack, tmp_path / "evil.zip", {MANIFEST_NAME: json.dumps(manifest).encode()})
    with pytest.raises(ModelError, match="must lie in the folder"):
        install_pack(evil, library)
    assert untouched(library) == [] and not (tmp_path / "evil.json").exists()


def test_not_a_pack_is_refused(library, tmp_path):
    (tmp_path / "notes.zip").write_bytes(b"not a zip at all")
    with pytest.raises(ModelError, match="damaged"):
        install_pack(tmp_path / "notes.zip", library)
    with pytest.raises(ModelError, match="not found"):
        install_pack(tmp_path / "absent.zip", library)
    assert untouched(library) == []


def test_a_refused_or_cancelled_pack_leaves_the_installed_one_as_it_was(pack, library, tmp_path):
    install_pack(pack, library)
    listing = untouched(library)
    before = {p: sha256(library / p) for p in listing if (library / p).is_file()}
    missing = rewrite(pack, tmp_path / "missing.zip", {"fcf_starter/model.json": None})
    with pytest.raises(ModelError):
        install_pack(missing, library)
    with pytest.raises(Cancelled):
        install_pack(pack, library, Recording(cancel_after=2))
    assert untouched(library) == listing   # no staging folder left either
    assert {p: sha256(library / p) for p in listing if (library / p).is_file()} == before


def write_model(folder: Path, source: str, name: str) -> Path:
    """A copy of a shipped model's card (weights are not read here) under another card name."""
    folder.mkdir(parents=True)
    card = json.loads((STARTER_MODELS_DIR / source / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**card, "name": name}))
    return folder


def test_resolution_order_folder_then_library_then_pack_then_repository(pack, library, tmp_path, monkeypatch):
    repository = str(STARTER_MODELS_DIR / "fcf_starter")
    set_model_library(None)
    assert resolve_model_dir("", "fcf") == repository   # a fresh clone: the repository's starters
    set_model_library(library)
    assert resolve_model_dir("", "fcf") == repository   # an empty library changes nothing
    install_pack(pack, library)
    assert resolve_model_dir("", "fcf") == str(library / "starters" / "fcf_starter")
    own = write_model(library / "fcf_starter", "fcf_starter", "My own FCF")   # the user's library comes first
    assert resolve_model_dir("", "fcf") == str(own)
    mine = write_model(library / "my_fcf", "fcf_starter", "Another FCF")
    assert resolve_model_dir("my_fcf", "fcf") == str(mine)                 # a name is looked up in the library
    explicit = write_model(tmp_path / "elsewhere" / "fcf_starter", "fcf_starter", "Chosen FCF")
    assert resolve_model_dir(str(explicit), "fcf") == str(explicit)        # a chosen folder always wins
    # a starter folder that moved (a Processing default from before the pack): found by name
    assert resolve_model_dir("/gone/vendor/resources/models/fcf_starter", "fcf") == str(own)
    assert resolve_model_dir("/gone/my_model", "fcf") == "/gone/my_model"   # anything else: loading says why
    listed = models_for_task("fcf")
    assert [m.name for m in listed] == ["My own FCF", "Another FCF"] and listed[0].path == str(own)
    assert listed[1].summary.startswith("fcf model; bands")


def test_no_model_anywhere_says_how_to_get_one(library, tmp_path, monkeypatch):
    monkeypatch.setattr(catalog, "STARTER_MODELS_DIR", tmp_path / "plugin_zip_has_no_models")
    assert find_model("fcf_starter") is None and models_for_task("fcf") == []
    with pytest.raises(ModelError, match="No 'fcf' model is installed: install the starter models pack"):
        resolve_model_dir("", "fcf")
    default = starter_model_dir("fcf")   # what Processing shows as the default: where the pack will put it
    assert default == library / "starters" / "fcf_starter"
    with pytest.raises(ModelError, match="No 'fcf' model is installed .* does not exist.*: install the starter"):
        resolve_model_dir(str(default), "fcf")

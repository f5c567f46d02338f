"""`make package`: a code-only plugin ZIP the QGIS plugin repository accepts (re-checked the way its validator,
QGIS-Django plugins/validator.py, checks uploads) and the starter models as a pack with a manifest."""
import configparser
import hashlib
import io
import re
import subprocess
import sys
import zipfile

from core.catalog import STARTER_MODELS, STARTER_MODELS_DIR
from core.model_pack import MANIFEST_NAME, Manifest
from rs_diffusion_plugin.packaging import REPO, build_zip, plugin_version

MAX_UPLOAD_SIZE = 25_000_000   # the validator's PLUGIN_MAX_UPLOAD_SIZE default
VALIDATOR_REQUIRED = ("name", "description", "version", "qgisMinimumVersion", "author", "email", "about", "tracker",
                      "repository")
OUR_REQUIRED = ("icon", "tags", "hasProcessingProvider")


def validate_like_the_plugin_repository(path) -> configparser.SectionProxy:
    """The checks of the repository's validator that need no network, as assertions."""
    assert path.stat().st_size <= MAX_UPLOAD_SIZE, f"{path.stat().st_size:,} bytes: over the upload limit"
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        for name in names:
            assert ".." not in name and not name.startswith("/"), name
            assert ".pyc" not in name, name
            assert not {"__MACOSX", ".git", "__pycache__"} & set(name.split("/")), name
        assert archive.testzip() is None
        assert {n.split("/")[0] for n in names} == {"rs_diffusion_plugin"}, "one first-level folder"
        package = names[0][:names[0].index("/")]
        assert re.match(r"^[A-Za-z][A-Za-z0-9-_]+$", package)
        assert f"{package}/__init__.py" in names and f"{package}/LICENSE" in names
        parser = configparser.ConfigParser()
        parser.optionxform = str   # the validator's keys are case-sensitive
        parser.read_file(io.StringIO(archive.read(f"{package}/metadata.txt").decode("utf8")))
        general = parser["general"]
        for key in VALIDATOR_REQUIRED + OUR_REQUIRED:
            assert general.get(key, "").strip(), key
        assert re.match(r"^[^/]+$", general["author"])
        assert f"{package}/{general['icon']}" in names
    return general


def test_plugin_zip_is_code_only_and_passes_the_repository_checks(tmp_path):
    path = build_zip(tmp_path / "rs_diffusion_plugin.zip")
    general = validate_like_the_plugin_repository(path)
    assert general["qgisMinimumVersion"] == "3.22" and general["hasProcessingProvider"] == "yes"
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        init = archive.read("rs_diffusion_plugin/__init__.py").decode()
    assert "def classFactory(iface)" in init
    for required in ("LICENSE", "icon.svg", "vendor/core/raster.py", "vendor/core/segmentation/pipeline.py",
                     "vendor/core/catalog.py", "vendor/core/model_pack.py", "vendor/resources/icons/rs_diffusion.svg",
                     "provider.py", "install_dialog.py"):
        assert f"rs_diffusion_plugin/{required}" in names, required
    assert not [n for n in names if n.endswith(".safetensors") or "/models/" in n or "packaging.py" in n]
    assert not list(tmp_path.glob(".*")), "staging files left behind"


def test_make_package_prints_both_artefacts_with_their_sizes(tmp_path):
    run = subprocess.run([sys.executable, "-m", "rs_diffusion_plugin.packaging", str(tmp_path / "dist")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    plugin, pack = tmp_path / "dist" / "rs_diffusion_plugin.zip", \
        tmp_path / "dist" / f"rs_diffusion_models-{plugin_version()}.zip"
    assert lines == [f"{plugin}  {plugin.stat().st_size:,} bytes", f"{pack}  {pack.stat().st_size:,} bytes"]
    validate_like_the_plugin_repository(plugin)
    check_models_pack(pack, plugin_version())
    assert not list((tmp_path / "dist").glob(".*")) and not list((tmp_path / "dist").glob("*.partial"))


def check_models_pack(path, version) -> None:
    """Every starter, every file listed with its true size and SHA-256, nothing unlisted."""
    with zipfile.ZipFile(path) as archive:
        manifest = Manifest.from_json(archive.read(MANIFEST_NAME).decode())
        assert manifest.version == version
        assert {m.name: m.task for m in manifest.models} == {name: task for task, name in STARTER_MODELS.items()}
        for model in manifest.models:
            assert model.version == version and model.summary.startswith(f"{model.task} model")
            assert {f.path for f in model.files} >= {f"{model.name}/model.json", f"{model.name}/model.safetensors"}
            for entry in model.files:
                data = archive.read(entry.path)
                assert len(data) == entry.size == (STARTER_MODELS_DIR / entry.path).stat().st_size
                assert hashlib.sha256(data).hexdigest() == entry.sha256
        assert sorted(archive.namelist()) == sorted([MANIFEST_NAME, *(f.path for m in manifest.models
                                                                      for f in m.files)])

"""`make package`: a zip the QGIS plugin manager accepts."""
import configparser
import zipfile

from rs_diffusion_plugin.packaging import build_zip

REQUIRED_METADATA = ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email",
                     "repository", "tracker", "icon", "tags", "hasProcessingProvider")


def test_zip_has_one_plugin_folder_with_everything_it_needs(tmp_path):
    path = build_zip(tmp_path / "rs_diffusion_plugin.zip")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert {n.split("/")[0] for n in names} == {"rs_diffusion_plugin"}
        init = archive.read("rs_diffusion_plugin/__init__.py").decode()
        metadata = archive.read("rs_diffusion_plugin/metadata.txt").decode()
    assert "def classFactory(iface)" in init
    for required in ("LICENSE", "icon.svg", "vendor/core/raster.py", "vendor/core/segmentation/pipeline.py",
                     "vendor/resources/models/segmentation_starter/model.json",
                     "vendor/resources/models/segmentation_starter/model.safetensors", "provider.py"):
        assert f"rs_diffusion_plugin/{required}" in names, required
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "packaging.py" in n]
    parser = configparser.ConfigParser()
    parser.read_string(metadata)
    general = parser["general"]
    for key in REQUIRED_METADATA:
        assert general.get(key), key
    assert general["qgisMinimumVersion"] == "3.22" and general["hasProcessingProvider"] == "yes"
    assert f"rs_diffusion_plugin/{general['icon']}" in names
    assert not list(tmp_path.glob(".*")), "staging files left behind"

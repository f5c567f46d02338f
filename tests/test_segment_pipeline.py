"""core.segmentation.pipeline on real georeferenced rasters with the shipped starter model."""
import numpy as np
import pytest
import rasterio
import torch

from core.checkpoint import ModelError
from core.device import BatchRunner, resolve_device
from core.progress import Cancelled, Progress
from core.raster import RasterError, read_array
from core.segmentation.pipeline import SegmentParams, segment_raster
from tests.conftest import files_in, make_scene_raster, read_polygons, write_test_raster


class Recorder(Progress):
    def __init__(self, cancel_after=None):
        self.fractions, self.messages, self.cancel_after = [], [], cancel_after

    def set_fraction(self, fraction):
        self.fractions.append(fraction)

    def is_canceled(self):
        return self.cancel_after is not None and len(self.fractions) >= self.cancel_after

    def info(self, message):
        self.messages.append(message)

    warning = info


def test_class_raster_matches_input_grid_and_keeps_nodata(tmp_path, scene_raster, starter_model):
    out, polys, probs = tmp_path / "classes.tif", tmp_path / "polys.gpkg", tmp_path / "probs.tif"
    progress = Recorder()
    result = segment_raster(SegmentParams(str(scene_raster), str(out), polygons_path=str(polys),
                                          probabilities_path=str(probs), tile_size=128, overlap=32), progress)
    with rasterio.open(scene_raster) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs and dst.transform == src.transform and dst.shape == src.shape
        assert dst.nodata == 255 and dst.dtypes[0] == "uint8"
        assert dst.colormap(1)[4][:3] == (217, 70, 59)
        classes = dst.read(1)
    assert (classes[:6] == 255).all() and (classes[:, :6] == 255).all()   # nodata border kept
    inner = classes[6:-6, 6:-6]
    assert set(np.unique(inner)) <= {0, 1, 2, 3, 4} and len(np.unique(inner)) >= 3
    p, valid = read_array(probs)
    np.testing.assert_allclose(p[:, valid].sum(0), 1.0, atol=1e-4)
    assert (p[:, ~valid] == -1).all()
    rows, _ = read_polygons(polys)
    assert {"class_id", "class_name", "area_m2", "area_km2"} <= set(rows[0])
    assert sum(r["area_m2"] for r in rows) == pytest.approx((200 - 12) * (260 - 12) * 0.25, rel=1e-6)
    assert progress.fractions[-1] == 1.0 and any("on cpu" in m for m in progress.messages)
    assert result.device.startswith("cpu") and result.tiles > 1


def test_starter_model_is_accurate_on_an_unseen_scene(tmp_path, starter_model):
    image, labels = make_scene_raster(tmp_path, size=(384, 384), seed=987654)
    out = tmp_path / "c.tif"
    segment_raster(SegmentParams(str(image), str(out)))
    pred, _ = read_array(out)
    truth, _ = read_array(labels)
    assert (pred == truth).mean() > 0.75


def test_small_raster_smaller_than_a_tile(tmp_path, starter_model):
    image, _ = make_scene_raster(tmp_path, size=(40, 23))
    out = tmp_path / "c.tif"
    segment_raster(SegmentParams(str(image), str(out)))
    assert read_array(out)[0].shape == (1, 40, 23)


def test_cancel_leaves_no_output_and_no_temp_files(tmp_path, starter_model):
    image, _ = make_scene_raster(tmp_path, size=(300, 300))
    before = files_in(tmp_path)
    with pytest.raises(Cancelled):
        segment_raster(SegmentParams(str(image), str(tmp_path / "c.tif"), tile_size=64, overlap=8,
                                     polygons_path=str(tmp_path / "p.gpkg")), Recorder(cancel_after=2))
    assert files_in(tmp_path) == before


def test_too_few_bands_names_the_missing_bands(tmp_path, starter_model):
    two = write_test_raster(tmp_path / "two.tif", np.zeros((2, 64, 64), np.uint8))
    with pytest.raises(RasterError, match=r"'my layer' has 2 band\(s\) but the model needs 3 \(red, green, blue\)"):
        segment_raster(SegmentParams(str(two), str(tmp_path / "c.tif"), layer_name="my layer"))
    assert files_in(tmp_path) == {"two.tif"}


def test_raster_without_crs_is_segmented_with_a_warning(tmp_path, starter_model):
    data = np.random.default_rng(0).integers(1, 255, (3, 70, 90), dtype=np.uint8)
    path = tmp_path / "nocrs.tif"
    with rasterio.open(path, "w", driver="GTiff", width=90, height=70, count=3, dtype="uint8") as dst:
        dst.write(data)
    progress = Recorder()
    segment_raster(SegmentParams(str(path), str(tmp_path / "c.tif"), layer_name="photo"), progress)
    assert any("'photo' has no coordinate reference system" in m for m in progress.messages)
    with rasterio.open(tmp_path / "c.tif") as dst:
        assert dst.crs is None and dst.shape == (70, 90)


def test_output_must_not_overwrite_input(tmp_path, scene_raster, starter_model):
    original = scene_raster.read_bytes()
    with pytest.raises(RasterError, match="is the input layer"):
        segment_raster(SegmentParams(str(scene_raster), str(scene_raster)))
    assert scene_raster.read_bytes() == original


def test_band_selection_and_float_input(tmp_path, starter_model):
    """Bands may come in another order and type: pick them explicitly."""
    image, labels = make_scene_raster(tmp_path, size=(128, 128))
    rgb, _ = read_array(image)
    shuffled = write_test_raster(tmp_path / "bgrx.tif", np.concatenate([rgb[::-1], rgb[:1]]).astype(np.float32))
    segment_raster(SegmentParams(str(image), str(tmp_path / "a.tif")))
    segment_raster(SegmentParams(str(shuffled), str(tmp_path / "b.tif"), bands=[3, 2, 1]))
    np.testing.assert_array_equal(read_array(tmp_path / "a.tif")[0], read_array(tmp_path / "b.tif")[0])


def test_wrong_task_model_is_refused(tmp_path, scene_raster, starter_model):
    import json, shutil
    other = tmp_path / "fusion_model"
    shutil.copytree(starter_model, other)
    card = json.loads((other / "model.json").read_text())
    card["task"] = "fusion"
    (other / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="is a 'fusion' model"):
        segment_raster(SegmentParams(str(scene_raster), str(tmp_path / "c.tif"), model_dir=str(other)))


def test_out_of_memory_halves_the_batch_then_falls_back():
    class Flaky(torch.nn.Module):
        """Raises CUDA OOM for batches larger than 2, like a GPU with little memory."""
        def forward(self, x):
            if len(x) > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return x * 2

    progress = Recorder()
    runner = BatchRunner(Flaky(), torch.device("cpu"), progress)
    out = runner(torch.ones(8, 1), lambda m, x: m(x))
    assert torch.equal(out, torch.full((8, 1), 2.0)) and runner.max_batch == 2
    assert any("batch size 4" in m for m in progress.messages)


def test_device_choice():
    assert resolve_device("auto").type in ("cpu", "cuda")
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="Unknown device"):
        resolve_device("tpu")

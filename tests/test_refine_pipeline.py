"""core.refinement.pipeline on tiny real GeoTIFFs with a random IDGBR model, and the shared tile loop."""
import numpy as np
import pytest
import rasterio

from core.progress import Cancelled, Progress
from core.raster import RasterError
from core.refinement.pipeline import RefineParams, parse_value_map, refine_raster
from core.tiling import TileGrid, run_tiles
from tests.conftest import UTM33, files_in
from tests.idgbr_fixtures import make_refiner_dir

HEIGHT, WIDTH = 40, 48
TRANSFORM = rasterio.Affine(0.5, 0, 500000, 0, -0.5, 5600000)
COLORS = {0: (10, 20, 30, 255), 1: (200, 0, 0, 255), 2: (0, 200, 0, 255), 10: (1, 2, 3, 255),
          20: (4, 5, 6, 255), 30: (7, 8, 9, 255)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def refiner(tmp_path_factory):
    """Card classes 0 background, 1 building, 2 road; tile 32; the small preset with random weights."""
    return make_refiner_dir(tmp_path_factory.mktemp("models") / "refiner")


class Recorder(Progress):
    def __init__(self, cancel_at_step=None):
        self.fractions, self.messages, self.warnings, self.steps = [], [], [], []
        self.cancel_at_step = cancel_at_step

    def set_fraction(self, fraction):
        self.fractions.append(fraction)

    def info(self, message):
        self.messages.append(message)

    def warning(self, message):
        self.warnings.append(message)

    def step(self, done, total):
        self.steps.append((done, total))
        if self.cancel_at_step is not None and len(self.steps) >= self.cancel_at_step:
            raise Cancelled("Cancelled by the user.")
        super().step(done, total)


def write_inputs(folder, class_values=(0, 1, 2), class_nodata=255, crs=UTM33, class_size=(HEIGHT, WIDTH)):
    """RGB uint8 image (nodata 0, a 5 x 6 nodata patch) and a uint8 classification (nodata border rows)."""
    rng = np.random.default_rng(1)
    image = rng.integers(1, 256, (3, HEIGHT, WIDTH), dtype=np.uint8)
    image[:, 10:15, 20:26] = 0
    classes = rng.choice(np.asarray(class_values, dtype=np.uint8), size=class_size)
    classes[:2] = class_nodata
    image_path, class_path = folder / "image.tif", folder / "classes.tif"
    common = dict(driver="GTiff", crs=crs, transform=TRANSFORM)
    with rasterio.open(image_path, "w", width=WIDTH, height=HEIGHT, count=3, dtype="uint8", nodata=0,
                       **common) as dst:
        dst.write(image)
    with rasterio.open(class_path, "w", width=class_size[1], height=class_size[0], count=1, dtype="uint8",
                       nodata=class_nodata, **common) as dst:
        dst.write(classes[None])
        dst.write_colormap(1, {v: COLORS[v] for v in class_values})
    return image_path, class_path


def params(image, classes, output, model, **kwargs):
    return RefineParams(str(image), str(classes), str(output), model_dir=str(model), steps=2, tile_size=32,
                        overlap=8, image_layer_name="my image", classification_layer_name="my classes", **kwargs)


def test_refined_raster_keeps_the_classification_grid_values_and_nodata(tmp_path, refiner):
    image, classes = write_inputs(tmp_path, class_values=(1, 2))   # class 0 unused: never chosen
    out = tmp_path / "refined.tif"
    progress = Recorder()
    result = refine_raster(params(image, classes, out, refiner, batch_size=3), progress)
    with rasterio.open(classes) as src, rasterio.open(out) as dst:
        assert (dst.shape, dst.crs, dst.transform) == (src.shape, src.crs, src.transform)
        assert (dst.dtypes, dst.nodata, dst.count) == (src.dtypes, 255, 1)
        assert dst.colormap(1)[2] == COLORS[2] and dst.colormap(1)[1] == COLORS[1]
        refined, coarse = dst.read(1), src.read(1)
    nodata = (coarse == 255)
    nodata[10:15, 20:26] = True   # the image's nodata patch
    assert (refined[nodata] == 255).all()
    assert set(np.unique(refined[~nodata])) == {1, 2}
    changed = (refined != coarse)[~nodata].mean()
    assert result.changed_fraction == pytest.approx(changed)
    assert result.tiles == 4 and result.output_path == str(out) and result.uncertainty_path == ""
    assert [c["value"] for c in result.classes] == [0, 1, 2] and result.device.startswith("cpu")
    assert progress.steps == [(3, 4), (4, 4)] and progress.fractions[-1] == 1.0
    assert all(a <= b for a, b in zip(progress.fractions, progress.fractions[1:]))
    assert any("'my classes'" in m and "'my image'" in m and "4 tiles of 32 px" in m and "tiny random refiner" in m
               and "on cpu" in m for m in progress.messages)
    assert not progress.warnings
    assert files_in(tmp_path) == {"image.tif", "classes.tif", "refined.tif"}


def test_value_map_maps_other_values_and_the_output_keeps_them(tmp_path, refiner):
    image, classes = write_inputs(tmp_path, class_values=(10, 20, 30))
    out = tmp_path / "refined.tif"
    refine_raster(params(image, classes, out, refiner, value_map=parse_value_map("10:0, 20:1, 30:2")))
    with rasterio.open(out) as dst:
        refined = dst.read(1)
        assert dst.colormap(1)[30] == COLORS[30]
    assert set(np.unique(refined[2:])) <= {10, 20, 30, 255} and len(set(np.unique(refined[2:])) - {255}) >= 2


def test_unknown_value_is_an_error_before_anything_is_written(tmp_path, refiner):
    image, classes = write_inputs(tmp_path, class_values=(10, 20, 30))
    before = files_in(tmp_path)
    with pytest.raises(ValueError, match=r"'my classes' has value\(s\) 30, .*0 background, 1 building, 2 road"):
        refine_raster(params(image, classes, tmp_path / "refined.tif", refiner, value_map={10: 0, 20: 1}))
    with pytest.raises(ValueError, match=r"'my classes' has value\(s\) 10, 20, 30"):
        refine_raster(params(image, classes, tmp_path / "refined.tif", refiner))
    with pytest.raises(ValueError, match=r"model class values .* not have \(30:7\)"):
        refine_raster(params(image, classes, tmp_path / "refined.tif", refiner, value_map={10: 0, 20: 1, 30: 7}))
    assert files_in(tmp_path) == before


def test_samples_give_an_uncertainty_raster_in_zero_one(tmp_path, refiner):
    image, classes = write_inputs(tmp_path)
    out, uncertainty = tmp_path / "refined.tif", tmp_path / "uncertainty.tif"
    refine_raster(params(image, classes, out, refiner, samples=2, uncertainty_path=str(uncertainty), seed=3))
    with rasterio.open(uncertainty) as dst:
        assert dst.count == 2 and dst.dtypes == ("float32", "float32") and dst.descriptions == ("entropy",
                                                                                              "disagreement")
        assert dst.nodata == -1 and dst.crs == UTM33
        bands = dst.read()
    with rasterio.open(out) as dst:
        valid = dst.read(1) != 255
    inside = bands[:, valid]
    assert inside.min() >= 0 and inside.max() <= 1
    assert inside[0].max() > 0.05                                  # random model: unsure
    one_tile = bands[1, 2:24, :24][valid[2:24, :24]]               # only the top-left tile covers these pixels
    assert set(np.unique(one_tile)) <= {0.0, 0.5, 1.0} and 0.5 in one_tile  # 2 samples (distinct seeds) differ
    assert (bands[:, ~valid] == -1).all()
    again = tmp_path / "again.tif"
    refine_raster(params(image, classes, again, refiner, samples=2, seed=3))
    with rasterio.open(out) as a, rasterio.open(again) as b:
        np.testing.assert_array_equal(a.read(), b.read())         # the seed makes runs reproducible


def test_image_and_classification_of_different_sizes_are_refused(tmp_path, refiner):
    image, classes = write_inputs(tmp_path, class_size=(HEIGHT, WIDTH + 2))
    with pytest.raises(RasterError, match=r"'my image' is 48 x 40 px but classification 'my classes' is 50 x 40"):
        refine_raster(params(image, classes, tmp_path / "refined.tif", refiner))
    assert "refined.tif" not in files_in(tmp_path)


def test_cancel_leaves_no_output_files(tmp_path, refiner):
    image, classes = write_inputs(tmp_path)
    before = files_in(tmp_path)
    progress = Recorder(cancel_at_step=1)
    with pytest.raises(Cancelled):
        refine_raster(params(image, classes, tmp_path / "refined.tif", refiner, batch_size=1,
                             uncertainty_path=str(tmp_path / "u.tif")), progress)
    assert progress.steps == [(1, 4)]
    assert files_in(tmp_path) == before


def test_outputs_must_not_overwrite_inputs(tmp_path, refiner):
    image, classes = write_inputs(tmp_path)
    original = classes.read_bytes()
    with pytest.raises(RasterError, match="is the input layer"):
        refine_raster(params(image, classes, classes, refiner))
    with pytest.raises(RasterError, match="is the input layer"):
        refine_raster(params(image, classes, tmp_path / "r.tif", refiner, uncertainty_path=str(image)))
    assert classes.read_bytes() == original


def test_tile_size_must_be_a_multiple_of_the_latent_factor(tmp_path, refiner):
    image, classes = write_inputs(tmp_path)
    with pytest.raises(ValueError, match="Tile size 30 px is not a multiple of 4"):
        refine_raster(RefineParams(str(image), str(classes), str(tmp_path / "r.tif"), model_dir=str(refiner),
                                   tile_size=30, overlap=8))
    assert "r.tif" not in files_in(tmp_path)


def test_classification_without_crs_is_refined_with_a_warning(tmp_path, refiner):
    image, classes = write_inputs(tmp_path, crs=None)
    progress = Recorder()
    refine_raster(params(image, classes, tmp_path / "r.tif", refiner), progress)
    assert any("'my classes' has no coordinate reference system" in w for w in progress.warnings)
    with rasterio.open(tmp_path / "r.tif") as dst:
        assert dst.crs is None and dst.shape == (HEIGHT, WIDTH)


def test_parse_value_map():
    assert parse_value_map("3:1, 7:4") == {3: 1, 7: 4}
    assert parse_value_map(" 10 : 0 ;20:1\n-1:2 ") == {10: 0, 20: 1, -1: 2}
    assert parse_value_map("") is None and parse_value_map("  ") is None
    for bad in ("3-1", "3:1, 7", "a:b", "3:1.5", "3:1, 3:2"):
        with pytest.raises(ValueError, match="value map"):
            parse_value_map(bad)


def test_tile_loop_blends_probabilities_not_argmaxes():
    """Two tiles overlapping by 8 px: the left one is sure of class 0, the right one mildly prefers class 1.

    Blended probabilities keep class 0 over the whole overlap (the left tile's weight never drops below
    1/9 there, and 1/9 of certainty outweighs a 0.55 / 0.45 preference); blending argmaxes would give
    class 1 on the overlap's right half.
    """
    grid = TileGrid(16, 24, tile=16, overlap=8)
    valid = np.ones((16, 24), dtype=bool)
    valid[0:4, 20:24] = False   # inside the right tile only
    valid[:, 10] = False        # inside the overlap
    classes = np.full((16, 24), -1)
    valid_out = np.zeros((16, 24), dtype=bool)
    written = np.zeros((16, 24), dtype=int)
    beliefs = {0: (1.0, 0.0), 8: (0.45, 0.55)}   # by tile column
    read, predicted = [], []

    def read_tile(tile):
        read.append((tile.row, tile.col))
        return tile.col, valid[tile.row:tile.row + tile.height, tile.col:tile.col + tile.width]

    def predict(tiles, inputs):
        predicted.append(inputs)
        return np.stack([np.broadcast_to(np.asarray(beliefs[col], np.float32)[:, None, None], (2, 16, 16))
                         for col in inputs])

    def write_block(row, col, block, block_valid):
        h, w = block.shape[1:]
        np.testing.assert_allclose(block.sum(axis=0), 1.0, rtol=1e-6)
        classes[row:row + h, col:col + w] = np.argmax(block, axis=0)
        valid_out[row:row + h, col:col + w] = block_valid
        written[row:row + h, col:col + w] += 1

    progress = Recorder()
    run_tiles(grid, 2, read_tile, predict, write_block, batch_size=1, progress=progress)
    expected = np.zeros((16, 24), dtype=int)
    expected[:, 16:] = 1
    np.testing.assert_array_equal(classes, expected)
    np.testing.assert_array_equal(valid_out, valid)
    assert (written == 1).all()
    assert read == [(0, 0), (0, 8)] and predicted == [[0], [8]] and progress.steps == [(1, 2), (2, 2)]


def write_reference(folder, values, nodata=255, name="reference.tif", size=(HEIGHT, WIDTH)):
    """A class raster on the inputs' grid (or of another size), nodata in its last row."""
    values = np.asarray(values, dtype=np.uint8)
    values[-1] = nodata
    path = folder / name
    with rasterio.open(path, "w", driver="GTiff", width=size[1], height=size[0], count=1, dtype="uint8",
                       nodata=nodata, crs=UTM33, transform=TRANSFORM) as dst:
        dst.write(values[None])
    return path


def test_run_reports_the_share_of_each_class_that_changed(tmp_path, refiner):
    image, classes = write_inputs(tmp_path, class_values=(0, 1, 2))
    out = tmp_path / "refined.tif"
    progress = Recorder()
    result = refine_raster(params(image, classes, out, refiner), progress)
    with rasterio.open(classes) as src, rasterio.open(out) as dst:
        coarse, refined = src.read(1), dst.read(1)
    valid = refined != 255
    expected = {name: float((refined != coarse)[valid & (coarse == value)].mean())
                for value, name in ((0, "background"), (1, "building"), (2, "road"))}
    assert result.changed_by_class == pytest.approx(expected)
    assert result.scores is None
    report = next(m for m in progress.messages if m.startswith("Done in"))
    assert all(f"{name} {100 * share:.1f}%" in report for name, share in expected.items())


def test_reference_layer_gives_coarse_and_refined_scores(tmp_path, refiner):
    image, classes = write_inputs(tmp_path, class_values=(0, 1, 2))
    with rasterio.open(classes) as src:
        coarse = src.read(1)
    truth = np.where(coarse == 255, 0, coarse)
    truth[20:30, :] = 1                                   # the reference differs from the coarse map here
    reference = write_reference(tmp_path, truth)
    out = tmp_path / "refined.tif"
    progress = Recorder()
    result = refine_raster(params(image, classes, out, refiner, reference_path=str(reference),
                                  reference_layer_name="field survey"), progress)
    assert set(result.scores) == {"coarse", "refined"}
    assert set(result.scores["coarse"]) == {"mIoU", "bIoU@3", "WFm@3"}
    # the coarse score, recomputed: the pixels valid in reference, coarse and refined map
    from core.metrics.boundary import boundary_aware_scores
    with rasterio.open(out) as dst:
        refined = dst.read(1)
    counted = (refined != 255)
    counted[-1] = False
    expected = boundary_aware_scores(np.where(counted, coarse, 0), np.where(counted, truth, -1),
                                     ["background", "building", "road"], ignore=-1)
    assert result.scores["coarse"]["mIoU"] == pytest.approx(expected["mIoU"])
    assert result.scores["coarse"]["WFm@3"] == pytest.approx(expected["WFm@3"])
    assert any("'field survey'" in m and "mIoU" in m and "->" in m for m in progress.messages)
    worse = result.scores["refined"]["WFm@3"] < result.scores["coarse"]["WFm@3"]
    assert worse == any("scores lower" in w for w in progress.warnings)


def test_reference_with_another_grid_or_unknown_values_is_refused_before_the_run(tmp_path, refiner):
    image, classes = write_inputs(tmp_path)
    out = tmp_path / "refined.tif"
    small = write_reference(tmp_path, np.zeros((HEIGHT, WIDTH - 8)), name="small.tif", size=(HEIGHT, WIDTH - 8))
    with pytest.raises(RasterError, match="Reference 'small.tif' is 40 x 40 px"):
        refine_raster(params(image, classes, out, refiner, reference_path=str(small)))
    odd = write_reference(tmp_path, np.full((HEIGHT, WIDTH), 7), name="odd.tif")
    with pytest.raises(ValueError, match="Reference layer 'odd.tif' has value.s. 7"):
        refine_raster(params(image, classes, out, refiner, reference_path=str(odd)))
    assert not out.exists()


def test_entropy_gate_keeps_the_coarse_class_wherever_the_refiner_is_unsure(tmp_path, refiner):
    """max_entropy: the gated map is the ungated one where the refined entropy is <= the gate and the
    classification elsewhere; the card's value is the default; 1 is the paper's ungated sampler."""
    import json
    import shutil
    image, classes = write_inputs(tmp_path)
    free, uncertainty = tmp_path / "free.tif", tmp_path / "uncertainty.tif"
    ungated = refine_raster(params(image, classes, free, refiner, uncertainty_path=str(uncertainty), max_entropy=1))
    with rasterio.open(classes) as src, rasterio.open(free) as dst, rasterio.open(uncertainty) as unc:
        coarse, refined, entropy = src.read(1), dst.read(1), unc.read(1)
    valid = refined != 255
    gate = float(np.median(entropy[valid & (refined != coarse)]))
    gated_card = tmp_path / "gated_model"
    shutil.copytree(refiner, gated_card)
    card = json.loads((gated_card / "model.json").read_text())
    card["extra"]["max_entropy"] = gate
    (gated_card / "model.json").write_text(json.dumps(card))
    for name, model, value in (("by_run.tif", refiner, gate), ("by_card.tif", gated_card, 0.0)):
        result = refine_raster(params(image, classes, tmp_path / name, model, max_entropy=value))
        with rasterio.open(tmp_path / name) as dst:
            gated = dst.read(1)
        np.testing.assert_array_equal(gated, np.where(valid & (entropy > gate), coarse, refined))
        assert 0 < result.changed_fraction < ungated.changed_fraction
    with pytest.raises(ValueError, match="max_entropy"):
        refine_raster(params(image, classes, tmp_path / "bad.tif", refiner, max_entropy=1.5))
    assert not (tmp_path / "bad.tif").exists()

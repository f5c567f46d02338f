"""FC-Siam-conc and detect_changes: output shapes, one shared encoder, a tiny real training that writes a
loadable card, and the raster pipeline (grid/CRS kept, polygons with areas, B resampled onto A's grid,
nodata, clear band-count errors, cancel leaves nothing, real DSIFN pairs, whole-image evaluation)."""
import argparse
import copy
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.features
import torch
from shapely.geometry import mapping

from core.change.fcsiam import MULTIPLE, SiameseEncoder, architecture_for, build_changedet
from core.change.pipeline import (CHANGE_NODATA, PROBABILITY_NODATA, ChangeParams, detect_changes,
                                  load_changedet)
from core.checkpoint import load_card
from core.data.change import list_change_triplets, read_change_mask, write_change_dataset, write_change_pair
from core.progress import Cancelled, Progress
from core.raster import RasterError
from tests.conftest import UTM33, files_in, read_polygons, shared_data, write_test_raster
from training.changedet import (ChangeDetTrainConfig, add_scenes_arguments, evaluate_changedet, main_scenes,
                                train_changedet)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# 60 steps on whole 64 px pairs: enough for the tiny model to find most changed buildings (IoU ~0.5).
TINY = {"preset": "small", "patch_size": 64, "batch_size": 4, "samples_per_image": 2, "steps": 60, "lr": 3e-3,
        "val_every": 1000, "checkpoint_every": 1000, "device": "cpu"}
HEIGHT, WIDTH = 96, 160


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny FC-Siam-conc trained for real on procedural pairs (+ synthetic ones at 1 : 2, held-out eval set)."""
    root = tmp_path_factory.mktemp("changedet")
    data = write_change_dataset(root / "data", count=4, size=64, seed=1)
    synthetic = write_change_dataset(root / "synthetic", count=3, size=64, seed=2)
    held_out = write_change_dataset(root / "held_out", count=2, size=64, seed=3)
    model = train_changedet(ChangeDetTrainConfig(data=str(data), output=str(root / "run"), name="tiny changedet",
                                                 synthetic=str(synthetic), eval_data=str(held_out), **TINY))
    return model, held_out


class Recorder(Progress):
    """Keeps warnings; cancels once `cancel_after` progress reports came in."""

    def __init__(self, cancel_after=None):
        self.warnings, self.reports, self.cancel_after = [], 0, cancel_after

    def warning(self, message):
        self.warnings.append(message)

    def set_fraction(self, fraction):
        self.reports += 1

    def is_canceled(self):
        return self.cancel_after is not None and self.reports >= self.cancel_after


def write_pair(folder: Path, seed=4, nodata=False):
    """A georeferenced procedural pair (EPSG:32633, 0.5 m) and its true change mask."""
    folder.mkdir(parents=True, exist_ok=True)
    a, b, label = folder / "a.tif", folder / "b.tif", folder / "label.tif"
    write_change_pair(a, b, label, HEIGHT, WIDTH, seed)
    if nodata:
        for path, block in ((a, np.s_[:, :, :5]), (b, np.s_[:, 70:, 90:])):
            with rasterio.open(path) as src:
                array = src.read()
            array[block] = 0
            write_test_raster(path, array, crs=src.crs.to_wkt(), nodata=0, transform=tuple(src.transform)[:6])
    return a, b, label


def detect(a, b, out: Path, model, **kwargs):
    out.mkdir(parents=True, exist_ok=True)
    params = ChangeParams(input_a_path=str(a), input_b_path=str(b), output_path=str(out / "change.tif"),
                          model_dir=str(model), polygons_path=str(out / "change.gpkg"),
                          probability_path=str(out / "change_prob.tif"), overlap=8)
    progress = kwargs.pop("progress", None) or Recorder()
    for key, value in kwargs.items():
        setattr(params, key, value)
    return detect_changes(params, progress), progress


def read1(path):
    with rasterio.open(path) as src:
        return src.read(1)


# --- the network ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bands", [3, 4])
def test_output_is_two_class_logits_at_input_size(bands):
    torch.manual_seed(0)
    model = build_changedet(architecture_for("small", bands)).eval()
    for height, width in ((32, 48), (20, 28)):          # a multiple of 16, and one padded internally
        a, b = torch.rand(2, bands, height, width), torch.rand(2, bands, height, width)
        assert model(a, b).shape == (2, 2, height, width)
    paper = build_changedet(architecture_for("paper", bands)).eval()
    assert paper(a[:1], b[:1]).shape == (1, 2, 20, 28)
    assert [c for c in architecture_for("paper", bands)["channels"]] == [16, 32, 64, 128]
    assert MULTIPLE == 16
    with pytest.raises(ValueError, match="preset"):
        architecture_for("huge", 3)


def test_both_dates_share_one_encoder_and_differ_only_by_concat_order():
    torch.manual_seed(0)
    architecture = architecture_for("small", 3)
    model = build_changedet(architecture)
    encoder_size = sum(p.numel() for p in SiameseEncoder(3, architecture["channels"], architecture["convs"],
                                                         0.2).parameters())
    assert sum(p.numel() for n, p in model.named_parameters() if n.startswith("encoder.")) == encoder_size
    assert all(n.split(".")[0] in ("encoder", "ups", "decoders") for n, _ in model.named_parameters())

    a, b = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    # BatchNorm statistics of these inputs (one training-mode pass, momentum 1): with the initial running
    # statistics random weights shrink the deeper levels until they no longer reach the logits.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 1.0
    with torch.no_grad():
        model(a, b)
    model.eval()
    with torch.no_grad():
        forward, backward = model(a, b), model(b, a)
        assert (forward - backward).abs().max() > 1e-2          # the order of the dates matters ...
        features_a, features_b = model.encode(a, b)
        bottleneck_only = model.decode(features_a, (features_b[0], features_a[1]))
        assert (bottleneck_only - forward).abs().max() > 1e-4   # (and every level reaches the logits)
        swapped = copy.deepcopy(model)                          # ... only through the concatenation order:
        channels = architecture["channels"]
        first_up = swapped.ups[0].weight                        # input: concat(bottleneck_A, bottleneck_B)
        first_up.copy_(torch.cat([first_up[channels[-1]:], first_up[:channels[-1]]], 0))
        for decoder, width in zip(swapped.decoders, reversed(channels)):
            conv = decoder[0][0]                                # input: concat(upsampled, skip_A, skip_B)
            conv.weight.copy_(torch.cat([conv.weight[:, :width], conv.weight[:, 2 * width:],
                                         conv.weight[:, width:2 * width]], 1))
        torch.testing.assert_close(swapped(b, a), forward, rtol=1e-5, atol=1e-6)

    # one set of encoder weights receives the gradients of both dates
    model.train()
    a, b = a[:1].clone(), b[:1].clone()
    a.requires_grad_(True)
    b.requires_grad_(True)
    model(a, b)[:, 1].mean().backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0
    assert model.encoder.levels[0][0][0].weight.grad.abs().sum() > 0


# --- training ------------------------------------------------------------------------------------------------

def test_training_writes_a_loadable_card(tiny):
    model_dir, held_out = tiny
    card = load_card(model_dir, task="changedet")
    assert card.bands == ["red", "green", "blue"]
    assert card.normalization.offset == [0.0] * 3 and card.normalization.scale == [255.0] * 3
    assert [(c.value, c.name, c.color) for c in card.classes] == [(0, "no change", "#000000"),
                                                                 (1, "change", "#ff0000")]
    assert card.tile_size == 64 and card.architecture["preset"] == "small" and card.ground_resolution == 0.5
    assert {"IoU", "F1", "recall", "accuracy"} <= set(card.metrics) <= {"IoU", "F1", "precision", "recall",
                                                                        "accuracy"}   # NaN (nothing predicted) left out
    assert all(0 <= v <= 1 for v in card.metrics.values())
    assert card.extra["synthetic_ratio"] == 2.0 and card.extra["synthetic"] == "synthetic"
    assert "1 / 5" in card.extra["loss"] and card.extra["steps"] == TINY["steps"]
    assert "held_out" in card.training_data and "synthetic" in card.training_data
    model, _ = load_changedet(str(model_dir))
    assert model(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)).shape == (1, 2, 32, 32)
    assert card.metrics["IoU"] > 0.2           # it did learn something about changed buildings
    assert (Path(model_dir).parent / "log.csv").is_file()


def test_nir_data_gives_a_four_band_model(tmp_path):
    data = write_change_dataset(tmp_path / "nir", count=2, size=32, seed=5, nir=True)
    model_dir = train_changedet(ChangeDetTrainConfig(data=str(data), output=str(tmp_path / "run"),
                                                     **dict(TINY, steps=1)))
    card = load_card(model_dir)
    assert card.bands == ["red", "green", "blue", "nir"] and card.architecture["in_channels"] == 4
    assert card.extra["synthetic_ratio"] == 0.0 and card.extra["synthetic"] == ""


# --- detect_changes ------------------------------------------------------------------------------------------

def test_change_raster_keeps_grid_and_polygons_have_areas(tmp_path, tiny):
    model, _ = tiny
    a, b, _ = write_pair(tmp_path / "pair")
    result, progress = detect(a, b, tmp_path / "out", model)
    assert not result.resampled and not progress.warnings
    with rasterio.open(a) as src, rasterio.open(result.output_path) as out:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
        assert out.dtypes[0] == "uint8" and out.nodata == CHANGE_NODATA and out.descriptions == ("change",)
        assert out.colormap(1)[1] == (255, 0, 0, 255)
        change, transform = out.read(1), out.transform
    assert set(np.unique(change)) <= {0, 1}
    assert result.changed_pixels == np.count_nonzero(change == 1) > 0
    assert result.tiles == 2 * 3                                     # 64 px tiles stepping by 56 px
    probability = read1(result.probability_path)
    assert probability.min() >= 0 and probability.max() <= 1
    np.testing.assert_array_equal(probability > 0.5, change == 1)

    rows, crs = read_polygons(result.polygons_path)
    assert crs.to_epsg() == 32633 and rows and result.polygons == len(rows)
    covered = np.zeros(change.shape, int)
    for row in rows:
        inside = rasterio.features.geometry_mask([mapping(row["geometry"])], change.shape, transform, invert=True)
        covered += inside
        assert row["class_name"] == "change"
        assert row["area_m2"] == pytest.approx(np.count_nonzero(inside) * 0.25)      # 0.5 m pixels
        assert row["area_km2"] == pytest.approx(row["area_m2"] / 1e6, abs=1e-6)
    np.testing.assert_array_equal(covered, change == 1)             # every change pixel in exactly one polygon
    assert result.changed_area_km2 == pytest.approx(result.changed_pixels * 0.25 / 1e6, abs=len(rows) * 5e-7)

    again, _ = detect(a, b, tmp_path / "batch1", model, batch_size=1, polygons_path="")
    np.testing.assert_array_equal(read1(again.output_path), change)
    assert again.changed_area_km2 == pytest.approx(result.changed_pixels * 0.25 / 1e6)   # no polygons: pixels


def test_nodata_of_either_date_is_255(tmp_path, tiny):
    model, _ = tiny
    a, b, _ = write_pair(tmp_path / "pair", nodata=True)
    result, _ = detect(a, b, tmp_path / "out", model)
    change, probability = read1(result.output_path), read1(result.probability_path)
    invalid = np.zeros(change.shape, bool)
    invalid[:, :5] = True
    invalid[70:, 90:] = True
    np.testing.assert_array_equal(change == CHANGE_NODATA, invalid)
    np.testing.assert_array_equal(probability == PROBABILITY_NODATA, invalid)


def test_b_on_another_grid_is_resampled_onto_a(tmp_path, tiny):
    model, _ = tiny
    a, b, _ = write_pair(tmp_path / "pair")
    with rasterio.open(b) as src:
        array, transform = src.read(), src.transform
    shifted = tmp_path / "pair" / "b_shifted.tif"        # 10.25 m east, coarser pixels: 20.5 A-pixels uncovered
    write_test_raster(shifted, array, transform=(0.6, 0, transform.c + 10.25, 0, -0.6, transform.f))
    result, progress = detect(a, shifted, tmp_path / "out", model, name_b="later image")
    assert result.resampled
    assert any("later image" in w and "resampled" in w for w in progress.warnings)
    with rasterio.open(a) as src, rasterio.open(result.output_path) as out:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
        change = out.read(1)
    assert (change[:, :20] == CHANGE_NODATA).all() and (change[:, 22:] != CHANGE_NODATA).all()

    no_crs = tmp_path / "pair" / "b_no_crs.tif"
    write_test_raster(no_crs, array[:, :60], crs=None)
    with pytest.raises(RasterError, match="cannot be co-registered"):
        detect(a, no_crs, tmp_path / "out2", model)
    assert files_in(tmp_path / "out2") == set()


def test_wrong_band_counts_are_explained(tmp_path, tiny):
    model, _ = tiny
    a, b, _ = write_pair(tmp_path / "pair")
    one_band = tmp_path / "pair" / "gray.tif"
    with rasterio.open(b) as src:
        write_test_raster(one_band, src.read(1), transform=tuple(src.transform)[:6])
    with pytest.raises(RasterError, match=r"Layer 'gray.tif' has 1 band\(s\) but the model needs 3 "
                                          r"\(red, green, blue\)"):
        detect(a, one_band, tmp_path / "out", model)
    with pytest.raises(RasterError, match=r"2 band\(s\) selected from layer 'time A' but the model needs 3"):
        detect(a, b, tmp_path / "out", model, bands_a=[1, 2], name_a="time A")
    with pytest.raises(RasterError, match=r"Date B 'b.tif' has bands 1..3; band 5 does not exist"):
        detect(a, b, tmp_path / "out", model, bands_b=[1, 2, 5])
    assert files_in(tmp_path / "out") == set()


def test_cancel_leaves_nothing(tmp_path, tiny):
    model, _ = tiny
    a, b, _ = write_pair(tmp_path / "pair")
    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        detect(a, b, out, model, batch_size=2, progress=Recorder(cancel_after=1))
    assert files_in(out) == set()


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_dsifn_pair_as_geotiffs(tmp_path, tiny):
    """A real 256 px DSIFN pair (PNG, no georeferencing) written as UTM GeoTIFFs goes through detect_changes."""
    model, _ = tiny
    a_png, b_png, label = list_change_triplets(shared_data("cd_dsifn"))[0]
    paths = []
    for png in (a_png, b_png):
        with rasterio.open(png) as src:
            paths.append(write_test_raster(tmp_path / f"{png.parent.name}.tif", src.read(), crs=UTM33))
    result, _ = detect(*paths, tmp_path / "out", model)
    with rasterio.open(result.output_path) as out:
        assert out.shape == (256, 256) and out.crs.to_epsg() == 32633
        assert set(np.unique(out.read(1))) <= {0, 1}
    assert read_change_mask(label).shape == (256, 256)


def test_whole_image_evaluation_matches_the_pipeline(tmp_path, tiny):
    model, held_out = tiny
    scores = evaluate_changedet(str(model), str(held_out), device="cpu")
    assert set(scores) == {"IoU", "F1", "precision", "recall", "accuracy"}
    assert all(0 <= v <= 1 for v in scores.values()) and scores["IoU"] > 0.2

    single = tmp_path / "single"
    a, b, label = list_change_triplets(held_out)[0]
    for folder, path in zip(("A", "B", "label"), (a, b, label)):
        (single / folder).mkdir(parents=True)
        (single / folder / path.name).write_bytes(path.read_bytes())
    result, _ = detect(a, b, tmp_path / "out", model, overlap=32, polygons_path="", probability_path="")
    predicted, truth = read1(result.output_path) == 1, read_change_mask(label) == 1
    tp = np.count_nonzero(predicted & truth)
    expected_iou = tp / np.count_nonzero(predicted | truth)
    assert evaluate_changedet(str(model), str(single), device="cpu")["IoU"] == pytest.approx(expected_iou)


def test_change_scenes_command_writes_the_layout(tmp_path):
    parser = argparse.ArgumentParser()
    add_scenes_arguments(parser)
    args = parser.parse_args(["--output", str(tmp_path / "cd"), "--count", "2", "--size", "32", "--nir"])
    main_scenes(args)
    triplets = list_change_triplets(tmp_path / "cd")
    assert len(triplets) == 2
    with rasterio.open(triplets[0][1]) as src:
        assert src.count == 4

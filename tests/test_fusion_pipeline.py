"""fuse_ir_visible on georeferenced rasters, and loading fusion priors (core.fusion.pipeline / prior)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from diffusers import UNet2DModel

from core.checkpoint import ModelError
from core.fusion.pipeline import FusionParams, fuse_ir_visible
from core.fusion.prior import architecture_for, load_prior
from core.fusion.sampler import FusionSettings
from core.progress import Cancelled, Progress
from core.raster import RasterError, read_array, write_geotiff
from tests.fusion_fixtures import irvis_pair, tiny_prior  # noqa: F401

FAST = FusionSettings(steps=5, dig_interval=2)


class Recorder(Progress):
    def __init__(self):
        self.messages, self.fractions = [], []

    def info(self, message):
        self.messages.append(message)

    warning = info

    def set_fraction(self, fraction):
        self.fractions.append(fraction)


def _run(tmp_path, infrared, visible, prior, **kwargs):
    kwargs.setdefault("settings", FAST)
    params = FusionParams(str(infrared), str(visible), str(tmp_path / "fused.tif"), model_dir=str(prior),
                          device="cpu", **kwargs)
    progress = Recorder()
    return fuse_ir_visible(params, progress), progress


def test_colour_fusion_keeps_the_visible_grid_and_colour(tmp_path, irvis_pair, tiny_prior):  # noqa: F811
    infrared, visible = irvis_pair
    result, progress = _run(tmp_path, infrared, visible, tiny_prior, weights_path=str(tmp_path / "weights.tif"),
                            tile_size=32, overlap=8)
    assert result.tiles > 1 and not result.resampled and "tiny prior" in result.prior
    with rasterio.open(result.output_path) as out, rasterio.open(visible) as vis:
        assert (out.count, out.width, out.height, out.dtypes[0]) == (3, vis.width, vis.height, "uint8")
        assert out.crs == vis.crs and out.transform == vis.transform
        fused, source = out.read().astype(float), vis.read().astype(float)
    # colour from the visible image: the fused chroma (B - Y, R - Y) follows the visible chroma
    luma = lambda a: 0.299 * a[0] + 0.587 * a[1] + 0.114 * a[2]  # noqa: E731
    assert np.corrcoef((fused[2] - luma(fused)).ravel(), (source[2] - luma(source)).ravel())[0, 1] > 0.9
    with rasterio.open(result.weights_path) as weights:
        assert weights.count == 3 and "step 0" in weights.descriptions[0]
        w = weights.read()
    assert ((w > 0) & (w < 1)).all()
    assert len(result.mean_infrared_weight) == 3
    # the log names the layers and states the work before the run: 5 steps + 3 DIG levels x 2 sources per tile
    assert "Fusing infrared 'ir.tif' with visible 'vi.tif'" in progress.messages[1]
    assert progress.messages[2].startswith(f"Expected work: {result.tiles} tile(s) of 32 px x 5 steps + 3 DIG noise "
                                           f"levels x 2 sources = {result.tiles * 11} prior evaluations")
    assert sum(batch * count for batch, count in result.prior_forwards.items()) == result.tiles * 11
    assert set(result.seconds_by_part) == {"prior", "dig", "em", "io"} and result.megapixels_per_minute > 0
    assert progress.fractions[-1] == 1.0 and any(0 < f < 1 for f in progress.fractions)
    assert any("Prior:" in m for m in progress.messages)


def test_gray_visible_gives_a_gray_result(tmp_path, irvis_pair, tiny_prior):  # noqa: F811
    infrared, visible = irvis_pair
    rgb, _ = read_array(visible)
    with rasterio.open(visible) as src:
        crs, transform = src.crs.to_wkt(), tuple(src.transform)[:6]
    gray = write_geotiff(tmp_path / "gray.tif", np.round(rgb.mean(axis=0)).astype(np.uint8), crs_wkt=crs,
                         transform=transform)
    result, _ = _run(tmp_path, infrared, gray, tiny_prior, settings=FusionSettings(mode="ddfm", steps=4))
    with rasterio.open(result.output_path) as out:
        assert out.count == 1 and out.shape == (60, 72)
    assert result.mean_infrared_weight == []


def test_infrared_on_another_grid_is_resampled(tmp_path, irvis_pair, tiny_prior):  # noqa: F811
    infrared, visible = irvis_pair
    ir, _ = read_array(infrared)
    with rasterio.open(infrared) as src:
        crs, t = src.crs.to_wkt(), src.transform
    coarse = write_geotiff(tmp_path / "ir_coarse.tif", ir[:, ::2, ::2].astype(np.uint8), crs_wkt=crs,
                           transform=(t.a * 2, 0.0, t.c, 0.0, t.e * 2, t.f))
    result, progress = _run(tmp_path, coarse, visible, tiny_prior)
    assert result.resampled
    assert any("resampled" in m for m in progress.messages)
    with rasterio.open(result.output_path) as out:
        assert out.shape == (60, 72)


def test_16_bit_infrared_is_scaled_from_its_data_range(tmp_path, irvis_pair, tiny_prior):  # noqa: F811
    """Percentile scaling: the same scene at two gains fuses to the same image."""
    infrared, visible = irvis_pair
    ir, _ = read_array(infrared)
    with rasterio.open(infrared) as src:
        crs, transform = src.crs.to_wkt(), tuple(src.transform)[:6]
    results = []
    for gain in (40, 200):
        path = write_geotiff(tmp_path / f"ir16_{gain}.tif", (ir * gain).astype(np.uint16), crs_wkt=crs,
                             transform=transform)
        result, _ = _run(tmp_path / str(gain), path, visible, tiny_prior)
        results.append(read_array(result.output_path)[0])
    assert np.abs(results[0] - results[1]).max() <= 1


def test_nodata_is_kept(tmp_path, irvis_pair, tiny_prior):  # noqa: F811
    infrared, visible = irvis_pair
    rgb, _ = read_array(visible)
    rgb[:, :, :10] = 0
    with rasterio.open(visible) as src:
        crs, transform = src.crs.to_wkt(), tuple(src.transform)[:6]
    holed = write_geotiff(tmp_path / "vi_nodata.tif", rgb.astype(np.uint8), crs_wkt=crs, transform=transform, nodata=0)
    result, _ = _run(tmp_path, infrared, holed, tiny_prior)
    with rasterio.open(result.output_path) as out:
        assert out.nodata == 0
        data = out.read()
    assert (data[:, :, :10] == 0).all() and (data[:, :, 10:] > 0).all()


def test_bad_inputs_are_explained_and_write_nothing(tmp_path, irvis_pair, tiny_prior):  # noqa: F811
    infrared, visible = irvis_pair
    with pytest.raises(RasterError, match="Infrared layer 'ir.tif' has bands 1..1; band 2"):
        _run(tmp_path, infrared, visible, tiny_prior, infrared_band=2)
    with pytest.raises(RasterError, match="is the input layer"):
        fuse_ir_visible(FusionParams(str(infrared), str(visible), str(visible), model_dir=str(tiny_prior)))
    with pytest.raises(ValueError, match="only in the 'dig' mode"):
        _run(tmp_path, infrared, visible, tiny_prior, settings=FusionSettings(mode="ddfm", steps=3),
             weights_path=str(tmp_path / "w.tif"))
    with pytest.raises(ValueError, match="Unknown DIG kind"):
        _run(tmp_path, infrared, visible, tiny_prior, settings=FusionSettings(dig_kind="regional"))
    ir, _ = read_array(infrared)
    write_geotiff(tmp_path / "nocrs.tif", ir[:, :30].astype(np.uint8), crs_wkt=None, transform=(1, 0, 0, 0, -1, 0))
    with pytest.raises(RasterError, match="cannot be co-registered"):
        _run(tmp_path, tmp_path / "nocrs.tif", visible, tiny_prior)
    assert not (tmp_path / "fused.tif").exists()


def test_cancel_leaves_nothing(tmp_path, irvis_pair, tiny_prior):  # noqa: F811
    infrared, visible = irvis_pair

    class CancelSoon(Progress):
        calls = 0

        def is_canceled(self):
            self.calls += 1
            return self.calls > 3

    params = FusionParams(str(infrared), str(visible), str(tmp_path / "fused.tif"), model_dir=str(tiny_prior),
                          weights_path=str(tmp_path / "weights.tif"), settings=FAST, tile_size=32, overlap=8)
    with pytest.raises(Cancelled):
        fuse_ir_visible(params, CancelSoon())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ir.tif", "vi.tif"]     # no output, no temp file


def test_priors_load_from_every_folder_kind_and_never_fall_back_to_random(tmp_path, tiny_prior):  # noqa: F811
    prior = load_prior(tiny_prior)
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([500])
    # a plain diffusers folder
    unet = UNet2DModel(**architecture_for("small", 32)["unet"])
    unet.save_pretrained(tmp_path / "diffusers", safe_serialization=True)
    loaded = load_prior(tmp_path / "diffusers")
    with torch.no_grad():
        assert torch.allclose(loaded(x, t), unet(x, t).sample, atol=1e-6)
        assert prior(x, t).shape == (1, 3, 16, 16)
    assert loaded.card.name == "diffusers"
    # no weights, or pickled weights only: an error, never a random prior
    (tmp_path / "diffusers" / "diffusion_pytorch_model.safetensors").rename(tmp_path / "diffusers" / "w.bin")
    with pytest.raises(ModelError, match="w.bin is a pickle"):
        load_prior(tmp_path / "diffusers")
    # a card of another task
    card = json.loads((tiny_prior / "model.json").read_text())
    card["task"] = "segmentation"
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="needs a 'fusion-prior' model"):
        load_prior(other)
    with pytest.raises(ModelError, match="neither"):
        load_prior(tmp_path)


def test_fuse_cli_passes_the_dig_options(tmp_path, tiny_prior, capsys, monkeypatch):  # noqa: F811
    """`python -m training fuse` with the DIG distance, temperature, patch and batch options reaches the pipeline."""
    from core.data.irvis import write_irvis_dataset
    from core.fusion import pipeline
    from training.__main__ import main as training_main
    pairs = write_irvis_dataset(tmp_path / "pairs", count=1, size=48, seed=5)
    seen = []
    original = pipeline.fuse_ir_visible
    monkeypatch.setattr(pipeline, "fuse_ir_visible", lambda params, progress=None: seen.append(params) or
                        original(params, progress))
    training_main(["fuse", "--pairs", str(pairs), "--output", str(tmp_path / "fused"), "--model", str(tiny_prior),
                   "--steps", "4", "--dig-interval", "2", "--dig-distance", "mse", "--dig-temperature", "0.5",
                   "--dig-kind", "spatial", "--dig-patch", "8", "--tile-size", "32", "--overlap", "8", "--batch-size", "3",
                   "--device", "cpu"])
    assert "1 fused images written" in capsys.readouterr().out
    settings = seen[0].settings
    assert (settings.dig_distance, settings.dig_temperature, settings.dig_kind, settings.dig_patch) == (
        "mse", 0.5, "spatial", 8)
    assert (seen[0].tile_size, seen[0].overlap, seen[0].batch_size) == (32, 8, 3)
    assert len(list((tmp_path / "fused").glob("*.tif"))) == 1

"""coarse-labels --folds: every scene's coarse map comes from a segmenter that never saw the scene."""
import argparse
import json

import numpy as np
import pytest
import rasterio

from core.data.scenes import write_scene_dataset
from training import idgbr_data


@pytest.fixture(scope="module")
def folded(tmp_path_factory):
    """6 scenes of 64 px, 3 folds, fold segmenters of 6 and 10 steps (in turn), boundaries then degraded."""
    work = tmp_path_factory.mktemp("folds")
    data = write_scene_dataset(work / "data", count=6, size=64, seed=2)
    fold_config = work / "fold_segmenter.json"
    fold_config.write_text(json.dumps({"data": "", "output": "", "patch_size": 64, "tile_size": 64,
                                       "batch_size": 2, "samples_per_image": 1, "lr": 2e-3}))
    parser = argparse.ArgumentParser()
    idgbr_data.add_coarse_arguments(parser)
    idgbr_data.main_coarse(parser.parse_args(
        ["--data", str(data), "--folds", "3", "--fold-steps", "6,10", "--fold-config", str(fold_config),
         "--degrade", "1", "--seed", "3", "--device", "cpu"]))
    return data


def test_every_coarse_map_comes_from_a_fold_model_that_never_saw_its_scene(folded):
    coarse = folded / "coarse"
    record = json.loads((coarse / "folds.json").read_text())
    scenes = sorted(p.stem for p in (folded / "masks").iterdir())
    assert record["folds"] == 3 and len(record["runs"]) == 3
    predicted = [stem for run in record["runs"] for stem in run["coarse_maps"]]
    assert sorted(predicted) == scenes                    # each scene predicted exactly once
    for run in record["runs"]:
        assert run["coarse_maps"] and not set(run["coarse_maps"]) & set(run["trained_on"])
        assert sorted(run["coarse_maps"] + run["trained_on"]) == scenes
    assert [run["steps"] for run in record["runs"]] == [6, 10, 6]
    source = (coarse / "source.txt").read_text()
    assert "out-of-fold" in source and "3 folds" in source and "0..1 px" in source
    assert not (coarse / "_folds").exists()               # fold models are not left in the dataset
    for stem in scenes:
        with rasterio.open(folded / "masks" / f"{stem}.tif") as truth, rasterio.open(coarse / f"{stem}.tif") as out:
            assert (out.shape, out.transform, out.crs) == (truth.shape, truth.transform, truth.crs)
            assert set(np.unique(out.read(1))) <= {0, 1, 2, 3, 4}


def test_report_scores_the_coarse_maps_overall_and_per_fold(folded):
    report = (folded / "coarse" / "report.md").read_text()
    assert "| images | accuracy | mIoU | bIoU@3 | WFm@1 | WFm@3 | WFm@5 |" in report
    rows = [line for line in report.splitlines() if line.startswith("| all") or line.startswith("| fold")]
    assert [row.split("|")[1].strip() for row in rows] == ["all", "fold 1", "fold 2", "fold 3"]
    for row in rows:
        numbers = [float(v) for v in row.split("|")[2:-1]]
        assert len(numbers) == 6 and all(0 <= v <= 1 for v in numbers if not np.isnan(v))
    assert 0 < float(rows[0].split("|")[3]) < 1           # mIoU of imperfect maps


def test_fold_and_model_options_are_checked(folded, tmp_path):
    with pytest.raises(ValueError, match="between 2 and the number of images"):
        idgbr_data.write_coarse_labels(str(folded), str(tmp_path / "a"), folds=7)
    with pytest.raises(ValueError, match="not both"):
        idgbr_data.write_coarse_labels(str(folded), str(tmp_path / "b"), model_dir="x", folds=2)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

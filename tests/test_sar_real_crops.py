"""The shipped oil-spill starter on the real SAR crops in ../shared/data/sar_oilspill (open sea, no land). Two
starters ago it called 61% of their pixels land (oil IoU 0.335), before the procedural scenes got resampled
speckle and sea trends; the next one 9.2% (oil IoU 0.372), nearly all of it on two crops whose bright sea an
8-bit product had clipped (9% of one crop's pixels are 255). Trained with half its real crops shown as saturated
products (`saturation`, issue 20), the starter calls 0.9% land and finds oil at IoU 0.491. This test holds the
issue's goal: under 5% land, oil IoU at least the 0.372 it had when the goal was set."""
from pathlib import Path

import pytest

from core.catalog import starter_model_dir
from training.sar import evaluate_saross

CROPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "sar_oilspill"
FORMER_OIL_IOU = 0.372
MAX_LAND_SHARE = 0.05

pytestmark = pytest.mark.skipif(not CROPS.is_dir(), reason="the real SAR crops live in ../shared/data")


def test_starter_calls_little_of_the_real_open_sea_land_and_finds_oil(tmp_path):
    crops = tmp_path / "crops"
    crops.mkdir()
    for split in ("train", "test"):
        for image in sorted((CROPS / split).glob("*.jpg")):
            (crops / f"{split}_{image.name}").symlink_to(image.resolve())
    result = evaluate_saross(str(starter_model_dir("saross")), str(crops), device="cpu")
    assert result["predicted/land"] < MAX_LAND_SHARE
    assert result["IoU/oil"] >= FORMER_OIL_IOU

"""The shipped oil-spill starter on the real SAR crops in ../shared/data/sar_oilspill (open sea, no land). The
starter it replaced called 61% of their pixels land (oil IoU 0.335), before the procedural scenes got resampled
speckle and sea trends (issue 20). The DAKD starter trained on the new scenes calls 9.2% land (oil IoU 0.372);
the same recipe without generated pairs 1.2% (0.490): the generated pairs bring part of the error back, and the
issue's 5% is not reached by the DAKD starter yet. This test holds what has been reached."""
from pathlib import Path

import pytest

from core.catalog import starter_model_dir
from training.sar import evaluate_saross

CROPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "sar_oilspill"
FORMER_OIL_IOU = 0.335
MAX_LAND_SHARE = 0.10   # the goal is 0.05

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

"""`make demo`'s refinement step says plainly whether the refined map is better than the coarse one."""
from core.demo import refinement_verdict


def test_verdict_says_when_the_refined_map_is_worse():
    coarse = {"mIoU": 0.936, "bIoU@3": 0.750, "WFm@3": 0.869}
    worse = refinement_verdict(coarse, {"mIoU": 0.923, "bIoU@3": 0.664, "WFm@3": 0.870})
    assert "LOWER" in worse and "mIoU, bIoU@3" in worse and "WFm@3" not in worse.split("(")[1].split(")")[0]
    better = refinement_verdict(coarse, {"mIoU": 0.936, "bIoU@3": 0.760, "WFm@3": 0.880})
    assert "at least as well" in better and "LOWER" not in better

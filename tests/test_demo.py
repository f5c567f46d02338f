"""`make demo`'s refinement step with the shipped starters, on a small scene."""
import argparse

from core.demo import oilspill_demo, refinement_demo


def test_refinement_demo_scores_coarse_and_refined(tmp_path, capsys, starter_model, idgbr_starter):
    refinement_demo(tmp_path, argparse.Namespace(refine_size=96, device="cpu"))
    report = capsys.readouterr().out
    assert (tmp_path / "refine_refined.tif").is_file() and (tmp_path / "refine_coarse.tif").is_file()
    rows = [line.split() for line in report.splitlines() if line.startswith(("  coarse", "  refined"))]
    assert [r[0] for r in rows] == ["coarse", "refined"]
    assert all(0.0 <= float(v) <= 1.0 for r in rows for v in r[1:])


def test_oilspill_demo_writes_oil_classes_slicks_and_pairs(tmp_path, capsys, sar_starters):
    import fiona
    import rasterio
    oilspill_demo(tmp_path, argparse.Namespace(sar_size=256, sar_pairs=2, device="cpu"))
    report = capsys.readouterr().out
    with rasterio.open(tmp_path / "sar_oil_classes.tif") as src, rasterio.open(tmp_path / "sar_scene.tif") as scene:
        assert (src.crs, src.transform, src.shape) == (scene.crs, scene.transform, scene.shape)
    with fiona.open(tmp_path / "sar_oil_slicks.gpkg") as slicks:
        assert all(f["properties"]["class_name"] == "oil" and f["properties"]["area_m2"] > 0 for f in slicks)
    assert len(list((tmp_path / "sar_pairs" / "soft").iterdir())) == 2
    assert "slicks" in report and "oil IoU" in report


def test_fusion_demo_fuses_the_shipped_pair(tmp_path, capsys, fusion_starter):
    from core.demo import SAMPLE_IRVIS, fusion_demo
    fusion_demo(tmp_path, argparse.Namespace(fusion_pair=str(SAMPLE_IRVIS), device="cpu"))
    printed = capsys.readouterr().out
    assert "Dig2DIG-25" in printed and "Qabf" in printed and "starter" in printed
    assert (tmp_path / "fused.tif").is_file() and (tmp_path / "fused_infrared_weights.tif").is_file()
    weights = [float(w) for w in printed.split("per DIG recomputation ")[1].splitlines()[0].split(", ")]
    # the weights steer: measured 0.000, 0.740, 0.019 (with a per-pixel mean as l they were 0.434, 0.500, 0.500)
    assert len(weights) == 3 and max(abs(w - 0.5) for w in weights) > 0.3 and max(weights) - min(weights) > 0.3
    assert "max of sources" in printed and "average of sources" in printed


def test_change_demo_detects_changes_and_generates_triplets(tmp_path, capsys, change_starters):
    from core.demo import change_demo
    change_demo(tmp_path, argparse.Namespace(change_size=128, change_triplets=2, device="cpu"))
    printed = capsys.readouterr().out
    assert "change IoU" in printed and "RDF-MIG" in printed
    assert (tmp_path / "changes.tif").is_file() and len(list((tmp_path / "change_triplets" / "A").iterdir())) == 2

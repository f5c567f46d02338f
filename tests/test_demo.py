"""`make demo`'s refinement step with the shipped starters, on a small scene."""
import argparse

from core.demo import refinement_demo


def test_refinement_demo_scores_coarse_and_refined(tmp_path, capsys, starter_model, idgbr_starter):
    refinement_demo(tmp_path, argparse.Namespace(refine_size=96, device="cpu"))
    report = capsys.readouterr().out
    assert (tmp_path / "refine_refined.tif").is_file() and (tmp_path / "refine_coarse.tif").is_file()
    rows = [line.split() for line in report.splitlines() if line.startswith(("  coarse", "  refined"))]
    assert [r[0] for r in rows] == ["coarse", "refined"]
    assert all(0.0 <= float(v) <= 1.0 for r in rows for v in r[1:])

"""`make gpu-check` on a machine without CUDA: it says so, writes nothing and exits 0 (CI machines have no GPU)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_without_cuda_it_says_so_writes_nothing_and_exits_0(tmp_path):
    output = tmp_path / "gpu.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}   # hides any GPU: the branch every CPU machine takes
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--output", str(output)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "no CUDA GPU on this machine" in done.stdout and "nothing was run" in done.stdout
    assert not output.exists()


def test_every_check_is_named_in_the_report_and_a_failure_counts():
    from benchmarks.gpu_check import checked, flat_results

    def broken():
        raise RuntimeError("kernel missing")

    report = {"training": {"segment": checked(lambda: {"steps": 3}), "saross": checked(broken)},
              "oom_fallback": checked(lambda: None)}
    assert dict(flat_results(report)) == {"training.segment": True, "training.saross": False, "oom_fallback": True}
    assert report["training"]["saross"]["error"] == "RuntimeError: kernel missing"

"""`make gpu-check`: everything that only runs on CUDA, run once on a small input -> benchmarks/results/gpu.json.

- every trainer for a few steps through `python -m training` (the Trainer's AMP path on CUDA: bfloat16 autocast
  where the GPU has it, float16 autocast + GradScaler otherwise), on small procedural datasets written first;
- every raster pipeline and sampler on a small input (the `roofline` section's runs, device cuda);
- BatchRunner's out-of-memory fallback (halve the batch, then the CPU) on the GPU;
- SAROSS-Net's paper preset (ResNet-34 UNet++ with CAFT nodes), one 512 x 512 forward at batch 1, timed in
  float32 and under the GPU's autocast dtype (paper: 45.28 ms on an RTX 2080, MambaVision-B encoder).
Each check records ok / its error and goes on: one run shows everything that breaks. Without CUDA the script
says so, writes nothing and exits 0.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "gpu.json"
CONFIGS = ROOT / "training" / "configs"
STEPS = 3

# (name, arguments after `python -m training`); {tmp} is the check's folder. Data first, then the trainers in
# the order their inputs exist (SAR-JointNet's later stages and RDF-MIG start from the earlier models).
TRAINING_RUNS = [
    ("scenes", "scenes --output {tmp}/scenes --count 8 --size 128 --seed 1"),
    ("sar-scenes", "sar-scenes --output {tmp}/sar --count 8 --size 128 --seed 7"),
    ("irvis-pairs", "irvis-pairs --output {tmp}/irvis --count 8 --size 128 --seed 5"),
    ("change-scenes", "change-scenes --output {tmp}/change --count 8 --size 128 --seed 0"),
    ("segment", "segment --config {cfg}/segmentation_starter.toml --data {tmp}/scenes --output {tmp}/segment"),
    ("satsynth", "satsynth --config {cfg}/satsynth_starter.toml --data {tmp}/scenes --output {tmp}/satsynth"),
    ("satsynth-sr", "satsynth-sr --config {cfg}/satsynth_sr_starter.toml --data {tmp}/scenes "
                    "--output {tmp}/satsynth_sr"),
    ("idgbr-embed", "idgbr-embed --config {cfg}/idgbr_embed_starter.toml --data {tmp}/scenes --output {tmp}/embed"),
    ("idgbr-vae", "idgbr-vae --config {cfg}/idgbr_vae_starter.toml --data {tmp}/scenes --output {tmp}/vae"),
    ("sar-jointnet", "sar-jointnet --config {cfg}/sar_jointnet_stage1_starter.toml --data {tmp}/sar "
                     "--output {tmp}/jointnet"),
    ("saross", "saross --config {cfg}/saross_starter.toml --data {tmp}/sar --synthetic '' --output {tmp}/saross"),
    ("fusion-prior", "fusion-prior --config {cfg}/fusion_prior_starter.toml --data {tmp}/irvis "
                     "--output {tmp}/prior"),
    ("changedet", "changedet --config {cfg}/changedet_starter.toml --data {tmp}/change --output {tmp}/changedet"),
    ("fcf", "fcf --config {cfg}/fcf_starter.toml --data {tmp}/change --output {tmp}/fcf"),
    ("rdfmig", "rdfmig --config {cfg}/rdfmig_starter.toml --data {tmp}/change --output {tmp}/rdfmig"),
]
DATA_COMMANDS = {"scenes", "sar-scenes", "irvis-pairs", "change-scenes"}


def checked(fn, *args) -> dict:
    """{"ok": True, ...fn's figures} or {"ok": False, "error": last line, "traceback": ...}: the run goes on."""
    started = time.perf_counter()
    try:
        figures = fn(*args) or {}
        return {"ok": True, "seconds": round(time.perf_counter() - started, 2), **figures}
    except Exception as exc:   # a check that breaks is the finding; the others still run
        return {"ok": False, "seconds": round(time.perf_counter() - started, 2),
                "error": f"{type(exc).__name__}: {exc}"[:500], "traceback": traceback.format_exc()[-2000:]}


def train(name: str, arguments: str, tmp: Path) -> dict:
    command = arguments.format(tmp=tmp, cfg=CONFIGS).split()
    command = [part.strip("'") for part in command]
    if name not in DATA_COMMANDS:
        command += ["--steps", str(STEPS), "--device", "cuda"]
    done = subprocess.run([sys.executable, "-m", "training", *command], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError((done.stderr.strip().splitlines() or ["(no output)"])[-1])
    return {}


def pipelines(tmp: Path) -> dict:
    from benchmarks.roofline import probes
    cfg = argparse.Namespace(quick=True, device="cuda")
    runs: dict = {}
    results = {"setup": checked(lambda: runs.update(probes(cfg)))}
    for name, probe in runs.items():
        folder = tmp / name
        folder.mkdir()
        results[name] = checked(probe.run, folder)
    return results


def oom_fallback() -> dict:
    """A model that runs out of GPU memory above one tile: the batch halves down to one, results unchanged."""
    from core.device import BatchRunner

    class Tight(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)

        def forward(self, x):
            if x.is_cuda and len(x) > 1:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (gpu-check)")
            return self.conv(x)

    model = Tight()
    x = torch.randn(4, 3, 64, 64)
    expected = model.conv(x).detach()
    runner = BatchRunner(model, torch.device("cuda"))
    out = runner(x, lambda m, t: m(t))
    difference = float((out - expected).abs().max())
    if runner.max_batch != 1 or difference > 1e-4:
        raise AssertionError(f"batch fell to {runner.max_batch}, outputs differ by {difference}")
    return {"max_batch": runner.max_batch, "max_abs_difference": difference}


def saross_forward(repeats: int) -> dict:
    from core.oilspill.saross import architecture_for, build_saross
    model = build_saross(architecture_for("paper", 5)).cuda().eval()
    x = torch.randn(1, 1, 512, 512, device="cuda")
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    figures = {}
    for label, autocast in (("float32", False), (str(dtype).removeprefix("torch."), True)):
        with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=autocast):
            for _ in range(10):
                model(x)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(repeats):
                model(x)
            torch.cuda.synchronize()
        figures[f"forward_ms_{label}"] = round((time.perf_counter() - start) / repeats * 1000, 2)
    return {**figures, "paper_forward_ms": 45.28, "repeats": repeats,
            "setting": "paper preset (ResNet-34 encoder, UNet++ with CAFT nodes), 5 classes, 512 x 512, batch 1"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=RESULTS, help="results file (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=300, help="timed SAROSS-Net forwards (default %(default)s)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU on this machine (torch.cuda.is_available() is False); nothing was run and "
              f"{args.output} is left as it is. Run `make gpu-check` on a CUDA machine.")
        return 0
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "bf16_supported": torch.cuda.is_bf16_supported(),
              "trainer_amp": ("bfloat16 autocast (no GradScaler)" if torch.cuda.is_bf16_supported()
                              else "float16 autocast + GradScaler") + " (training/trainer.py)"}
    with tempfile.TemporaryDirectory(prefix="rsd-gpu-check-") as tmp:
        report["training"] = {name: checked(train, name, arguments, Path(tmp))
                              for name, arguments in TRAINING_RUNS}
        for name, result in report["training"].items():
            print(f"training {name}: {'ok' if result['ok'] else result['error']}", flush=True)
        pipelines_dir = Path(tmp) / "pipelines"
        pipelines_dir.mkdir()
        report["pipelines"] = pipelines(pipelines_dir)
    report["oom_fallback"] = checked(oom_fallback)
    report["saross_forward_512"] = checked(saross_forward, args.repeats)
    failed = [key for key, value in flat_results(report) if not value]
    report["failed"] = failed
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"gpu-check: {len(failed)} failed check(s){': ' + ', '.join(failed) if failed else ''} -> {args.output}")
    return 1 if failed else 0


def flat_results(tree: dict, prefix: str = ""):
    """(check name, ok) for every check in the report."""
    for key, value in tree.items():
        if isinstance(value, dict) and "ok" in value:
            yield f"{prefix}{key}", value["ok"]
        elif isinstance(value, dict):
            yield from flat_results(value, f"{prefix}{key}.")


if __name__ == "__main__":
    sys.exit(main())

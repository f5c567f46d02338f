"""`roofline`: how close each pipeline's model runs to what this machine can do, and what the pipeline around it costs.

Peak: the best GFLOP/s of a large 3x3 convolution and of a large matmul, with the same thread count as the rest.
For each pipeline, one real run (a procedural raster, or the generator with its own settings) records every call
of the model's hot method (forward, or IDGBR's predict_cfg) with its inputs. The bare model then replays exactly
those calls: `pipeline_over_bare` = bare replay time / whole pipeline time (the share of the pipeline spent in
the model), and `fraction_of_peak` = the model's FLOPs (torch.utils.flop_counter) / bare time / peak. Where that
fraction is below 0.3 the note says which layer shapes hold it back: thin (<= 32 channels per group) and
depthwise convolutions do few FLOPs per byte moved, so they run at memory speed, not at the peak.
Pipeline and replay runs are interleaved, best of each (other load on the machine slows both alike). Everything
runs on plain torch (RS_DIFFUSION_CPU_PATH=torch): the `onnx` section compares the CPU paths.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.harness import step, timed
from core.catalog import RESOURCES_DIR, starter_model_dir
from core.device import CPU_PATH_ENV, describe_device, resolve_device

LOW_FRACTION = 0.3
REFINE_PX = 256   # IDGBR samples every 64 px tile with CFG: a 1024 px raster would take ~20 min per run here
THIN_CHANNELS = 32


@dataclass
class Probe:
    """One pipeline: `run(tmp)` runs it end to end; `owner.method` is the model call it spends its time in."""
    run: Callable[[Path], object]
    owner: type
    method: str = "forward"


def measure_peak(repeats: int) -> dict:
    """GFLOP/s of a 3x3 conv (128 -> 128 channels, 128 x 128) and of a 2048 x 2048 matmul; the peak is the best."""
    conv = torch.nn.Conv2d(128, 128, 3, padding=1, bias=False).eval()
    image = torch.randn(1, 128, 128, 128)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    conv_flops = 2 * 128 * 128 * 9 * 128 * 128
    matmul_flops = 2 * 2048 ** 3
    with torch.inference_mode():
        conv(image), a @ b   # warm-up
        conv_s = min(timed(lambda: conv(image)) for _ in range(repeats))
        matmul_s = min(timed(lambda: a @ b) for _ in range(repeats))
    rates = {"conv3x3_gflops": conv_flops / conv_s / 1e9, "matmul_gflops": matmul_flops / matmul_s / 1e9}
    return {**{k: round(v, 1) for k, v in rates.items()}, "peak_gflops": round(max(rates.values()), 1),
            "threads": torch.get_num_threads()}


@contextlib.contextmanager
def recording(owner: type, method: str, calls: list):
    """Record (self, args, kwargs) of every call of owner.method while inside."""
    original = getattr(owner, method)

    def recorder(self, *args, **kwargs):
        calls.append((self, args, kwargs))
        return original(self, *args, **kwargs)

    setattr(owner, method, recorder)
    try:
        yield
    finally:
        setattr(owner, method, original)


def thin_share(module: torch.nn.Module, call: tuple, method: str) -> float:
    """Share of the convolution FLOPs of one call spent in thin or depthwise convolutions."""
    totals = {"thin": 0.0, "all": 0.0}

    def hook(conv, inputs, output):
        per_group_in = conv.in_channels // conv.groups
        flops = 2.0 * output.numel() * per_group_in * conv.kernel_size[0] * conv.kernel_size[1]
        totals["all"] += flops
        if conv.groups > 1 or min(per_group_in, conv.out_channels) <= THIN_CHANNELS:
            totals["thin"] += flops

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.inference_mode():
            replay([call], method)
    finally:
        for handle in handles:
            handle.remove()
    return totals["thin"] / totals["all"] if totals["all"] else 0.0


def replay(calls: list, method: str) -> None:
    with torch.inference_mode():
        for self, args, kwargs in calls:
            getattr(self, method)(*args, **kwargs)


def measure_pipeline(name: str, probe: Probe, tmp: Path, peak: float, repeats: int) -> dict:
    calls: list = []
    with step(f"{name}: recorded run"), recording(probe.owner, probe.method, calls):
        probe.run(tmp)
    if not calls:
        raise RuntimeError(f"roofline: the {name} pipeline never called {probe.owner.__name__}.{probe.method}.")
    calls = [(self, detached(args), detached(kwargs)) for self, args, kwargs in calls]
    by_shape: dict = {}
    flops = sum(call_flops(call, probe.method, by_shape) for call in calls)
    pipeline_s, bare_s = [], []
    for i in range(repeats):
        with step(f"{name}: pipeline, run {i + 1}/{repeats}"):
            pipeline_s.append(timed(lambda: probe.run(tmp)))
        with step(f"{name}: bare model, {len(calls)} calls, run {i + 1}/{repeats}"):
            bare_s.append(timed(lambda: replay(calls, probe.method)))
    model = calls[0][0]
    achieved = flops / min(bare_s) / 1e9
    fraction = achieved / peak
    figures = {"model_gflops_per_s": round(achieved, 1), "fraction_of_peak": round(fraction, 3),
               "pipeline_over_bare": round(min(bare_s) / min(pipeline_s), 3),
               "gflop_per_call": round(flops / len(calls) / 1e9, 3), "calls": len(calls),
               "call_input_shapes": [list(t.shape) for t in calls[0][1] if torch.is_tensor(t)],
               "seconds": {"pipeline": round(min(pipeline_s), 3), "bare": round(min(bare_s), 3)}}
    if fraction < LOW_FRACTION:
        share = thin_share(model, calls[0], probe.method)
        figures["note"] = (f"{share:.0%} of the convolution FLOPs are in thin (<= {THIN_CHANNELS} channels per group) "
                           "or depthwise convolutions: few FLOPs per byte moved, so they run at memory speed"
                           + ("" if share >= 0.5 else "; the rest is in small activations (per-call overhead of "
                              "normalisation, attention reshapes and elementwise ops)") + ".")
    return figures


def call_flops(call: tuple, method: str, by_shape: dict) -> int:
    """FLOPs of one call, counted once per distinct input shape (a last, smaller batch counts apart)."""
    key = tuple(tuple(t.shape) for t in call[1] if torch.is_tensor(t))
    if key not in by_shape:
        with FlopCounterMode(display=False) as counter:
            replay([call], method)
        by_shape[key] = counter.get_total_flops()
    return by_shape[key]


def detached(value):
    if torch.is_tensor(value):
        return value.detach().clone()
    if isinstance(value, (list, tuple)):
        return type(value)(detached(v) for v in value)
    if isinstance(value, dict):
        return {k: detached(v) for k, v in value.items()}
    return value


def probes(cfg: argparse.Namespace) -> dict[str, Probe]:
    """Each pipeline on a procedural input (sizes cut by --quick); imports stay here, the section is optional."""
    from core.change.fcsiam import FCSiamConc
    from core.change.pipeline import ChangeParams, detect_changes
    from core.data.change import write_change_pair
    from core.data.irvis import write_irvis_pair
    from core.data.sar import write_sar_scene
    from core.data.scenes import write_scene
    from core.fusion.pipeline import FusionParams, fuse_ir_visible
    from core.fusion.prior import FusionPrior
    from core.oilspill.generate import SarSynthesisParams, synthesize_sar_pairs
    from core.oilspill.jointnet import SarJointNet
    from core.oilspill.pipeline import OilSpillParams, detect_oil_spills
    from core.refinement.model import IDGBR
    from core.refinement.pipeline import RefineParams, refine_raster
    from core.segmentation.pipeline import SegmentParams, segment_raster
    from core.synthesis.generate import SynthesisParams, synthesize_pairs
    from core.synthesis.satsynth import JointDenoiser
    from segmentation_models_pytorch.base import SegmentationModel

    size = 384 if cfg.quick else 1024
    refine_size = 128 if cfg.quick else REFINE_PX
    count = 4 if cfg.quick else 8
    device = cfg.device

    def once(tmp: Path, name: str, write) -> None:
        if not (tmp / name).exists():
            write()

    def segment(tmp):
        once(tmp, "scene.tif", lambda: write_scene(tmp / "scene.tif", tmp / "labels.tif", size, size, seed=11))
        segment_raster(SegmentParams(str(tmp / "scene.tif"), str(tmp / "classes.tif"), device=device))

    def oil(tmp):
        once(tmp, "sar.tif", lambda: write_sar_scene(tmp / "sar.tif", tmp / "sar_labels.tif", size, size, seed=11))
        detect_oil_spills(OilSpillParams(str(tmp / "sar.tif"), str(tmp / "oil.tif"), device=device))

    def change(tmp):
        once(tmp, "a.tif", lambda: write_change_pair(tmp / "a.tif", tmp / "b.tif", tmp / "change_labels.tif",
                                                     size, size, seed=11))
        detect_changes(ChangeParams(str(tmp / "a.tif"), str(tmp / "b.tif"), str(tmp / "change.tif"), device=device))

    def refine(tmp):
        once(tmp, "scene.tif", lambda: write_scene(tmp / "scene.tif", tmp / "labels.tif", refine_size, refine_size,
                                                   seed=11))
        refine_raster(RefineParams(str(tmp / "scene.tif"), str(tmp / "labels.tif"), str(tmp / "refined.tif"),
                                   steps=5 if cfg.quick else 0, device=device))

    def fuse(tmp):
        once(tmp, "ir.tif", lambda: write_irvis_pair(tmp / "ir.tif", tmp / "vi.tif", 256, 256, seed=2026))
        fuse_ir_visible(FusionParams(str(tmp / "ir.tif"), str(tmp / "vi.tif"), str(tmp / "fused.tif"), device=device))

    def satsynth(tmp):
        synthesize_pairs(SynthesisParams(str(tmp / f"satsynth_{len(list(tmp.glob('satsynth_*')))}"), count=count,
                                         steps=50, device=device))

    def jointnet(tmp):
        synthesize_sar_pairs(SarSynthesisParams(str(tmp / f"sar_pairs_{len(list(tmp.glob('sar_pairs_*')))}"),
                                                count=count, steps=50, device=device))

    return {"segment": Probe(segment, SegmentationModel), "oil_spills": Probe(oil, SegmentationModel),
            "change": Probe(change, FCSiamConc), "refine": Probe(refine, IDGBR, "predict_cfg"),
            "fuse": Probe(fuse, FusionPrior), "satsynth_ddim50": Probe(satsynth, JointDenoiser),
            "sar_jointnet_ddim50": Probe(jointnet, SarJointNet)}


@contextlib.contextmanager
def plain_torch():
    """The pipelines on plain torch: the roofline is the model's own FLOP rate, and a faster CPU path would run
    other code than the recorded calls (the `onnx` section compares the paths)."""
    before = os.environ.get(CPU_PATH_ENV)
    os.environ[CPU_PATH_ENV] = "torch"
    try:
        yield
    finally:
        if before is None:
            del os.environ[CPU_PATH_ENV]
        else:
            os.environ[CPU_PATH_ENV] = before


def bench(cfg: argparse.Namespace) -> dict:
    repeats = 1 if cfg.quick else 3
    with step("peak: 3x3 conv and matmul"):
        peak = measure_peak(3 if cfg.quick else 7)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="rsd-bench-roofline-") as tmp, plain_torch():
        for name, probe in probes(cfg).items():
            folder = Path(tmp) / name
            folder.mkdir()
            rows[name] = measure_pipeline(name, probe, folder, peak["peak_gflops"], repeats)
    return {"peak": peak, **rows,
            "settings": {"device": describe_device(resolve_device(cfg.device)), "repeats": repeats,
                         "raster_px": 384 if cfg.quick else 1024, "refine_raster_px": 128 if cfg.quick else REFINE_PX,
                         "fusion_pair_px": 256,
                         "generated_pairs": 4 if cfg.quick else 8, "starters": str(RESOURCES_DIR / "models"),
                         "low_fraction": LOW_FRACTION, "segmenter": str(starter_model_dir("segmentation"))}}

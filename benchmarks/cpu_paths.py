"""`onnx`: ONNX Runtime against the CPU path our pipelines run, per model family, on the same inputs and threads.

`ort_over_torch` = ONNX Runtime's throughput / our path's (goal <= 1.0: ours at least as fast). Our path is what
core.device.BatchRunner picks for the raster models (segmenter, SAROSS-Net, FC-Siam-conc: its first-tile trial
among plain torch, channels_last, bfloat16 autocast where the CPU has native bf16, and ONNX Runtime), and plain
torch for the diffusion UNets, whose samplers call the model directly. Both run the same batch; ONNX Runtime
gets the forward traced for that batch (time steps and conditions frozen in, as they are per call).
Interleaved repeats, best of each.
"""
from __future__ import annotations

import argparse
from typing import Callable

import torch

from benchmarks.harness import step, timed
from core.catalog import starter_model_dir
from core.device import CPU_PATH_ENV, BatchRunner, CpuPath, describe_device, native_bf16, requested_cpu_path

Case = tuple[torch.nn.Module, torch.Tensor, Callable]


def cases(quick: bool) -> dict[str, Case]:
    """Each family's starter on the batch its pipeline runs (random inputs: timing does not depend on them)."""
    from core.change.pipeline import load_changedet
    from core.fusion.prior import load_prior
    from core.oilspill.generate import load_jointnet
    from core.oilspill.pipeline import load_saross
    from core.refinement.model import load_refiner, noise_scheduler
    from core.segmentation.model import load_segmenter
    from core.synthesis.generate import load_denoiser

    cpu = torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    tiles = 2 if quick else 4

    def softmax(model, x):
        return torch.softmax(model(x), dim=1)

    segmenter = load_segmenter(starter_model_dir("segmentation"))[0]
    saross = load_saross(str(starter_model_dir("saross")))[0]
    change = load_changedet(str(starter_model_dir("changedet")))[0]
    prior = load_prior(starter_model_dir("fusion-prior")).eval()
    satsynth = load_denoiser(str(starter_model_dir("satsynth")), "satsynth", cpu)[0].eval()
    jointnet, sar_card = load_jointnet(str(starter_model_dir("sar-jointnet")), cpu)
    refiner, refine_card = load_refiner(starter_model_dir("idgbr"))
    refiner.eval()
    t = torch.full((tiles,), 500)
    size = refine_card.tile_size
    with torch.inference_mode():
        image = torch.rand(tiles, 3, size, size, generator=g) * 2 - 1
        coarse = torch.randint(0, len(refine_card.classes), (tiles, size, size), generator=g)
        latents = refiner.encode_image(image)
        conditions = refiner.condition_features(latents, refiner.encode_labels(coarse))
    step_t = noise_scheduler().timesteps[0]
    sar_size, classes = sar_card.architecture["sample_size"], sar_card.architecture["classes"]
    labels = torch.randn(tiles, classes, sar_size, sar_size, generator=g)
    return {
        "segmenter": (segmenter, torch.randn(tiles, 3, 256, 256, generator=g), softmax),
        "saross": (saross, torch.randn(tiles, 1, 256, 256, generator=g), softmax),
        "fcsiam_conc": (change, torch.randn(tiles, 6, 128, 128, generator=g),
                        lambda m, x: torch.softmax(m(x[:, :3], x[:, 3:]), dim=1)),
        "fusion_prior": (prior, torch.randn(2, 3, 256, 256, generator=g), lambda m, x: m(x, t[:2])),
        "satsynth": (satsynth, torch.randn(tiles, 6, 64, 64, generator=g), lambda m, x: m(x, t).sample),
        "sar_jointnet": (jointnet, torch.randn(tiles, 1, sar_size, sar_size, generator=g),
                         lambda m, x: torch.cat(m(x, labels, t), dim=1)),
        "idgbr": (refiner, torch.randn(latents.shape, generator=g),
                  lambda m, z: torch.cat(m.predict_cfg(z, step_t, conditions), dim=1)),
    }


RASTER_FAMILIES = ("segmenter", "saross", "fcsiam_conc")


def bench(cfg: argparse.Namespace) -> dict:
    repeats = 2 if cfg.quick else 5
    rows = {}
    for name, (model, x, forward) in cases(cfg.quick).items():
        with step(f"{name}: our path and ONNX Runtime on {list(x.shape)}"):
            rows[name] = compare(name, model, x, forward, repeats)
    return {"ort_over_torch": {name: row["ort_over_torch"] for name, row in rows.items()}, "families": rows,
            "settings": {"device": describe_device(torch.device("cpu")), "repeats": repeats,
                         "native_bf16": native_bf16(), "requested": requested_cpu_path(), "override": CPU_PATH_ENV}}


@torch.inference_mode()
def compare(name: str, model: torch.nn.Module, x: torch.Tensor, forward: Callable, repeats: int) -> dict:
    if name in RASTER_FAMILIES:
        runner = BatchRunner(model, torch.device("cpu"))
        runner(x[:1], forward)   # the first-tile trial picks the path
        ours, chosen = (lambda: runner(x, forward)), runner.cpu_path.name
    else:
        model.eval()
        ours, chosen = (lambda: forward(model, x)), "torch"
    onnx = CpuPath("onnxruntime", model)
    onnx_run = (lambda: onnx.run_onnx(forward, x)) if len(x) == 1 else (lambda: whole_batch(onnx, forward, x))
    ours(), onnx_run()   # warm-up (and the export)
    ours_s, onnx_s = [], []
    for _ in range(repeats):
        ours_s.append(timed(ours))
        onnx_s.append(timed(onnx_run))
    return {"ort_over_torch": round(min(ours_s) / min(onnx_s), 3), "our_path": chosen,
            "seconds": {"ours": round(min(ours_s), 4), "onnxruntime": round(min(onnx_s), 4)},
            "batch": list(x.shape)}


def whole_batch(path: CpuPath, forward: Callable, x: torch.Tensor) -> torch.Tensor:
    """ONNX Runtime on the whole batch at once (traced for it), as a user running the exported file would."""
    signature = (forward.__code__, tuple(id(c.cell_contents) for c in forward.__closure__ or ()), tuple(x.shape))
    if signature != path.traced_for:
        from core.device import onnx_session
        path.session, path.traced_for = onnx_session(path.model, forward, x), signature
    return torch.from_numpy(path.session.run(None, {"input": x.float().numpy()})[0])

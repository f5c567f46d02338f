"""`onnx`: ONNX Runtime against the CPU path our pipelines run, per model family, on the same inputs and threads.

`ort_over_torch` = ONNX Runtime's throughput / our path's (goal <= 1.0: ours at least as fast). Our path is what
the pipelines run: for the raster models (segmenter, SAROSS-Net, FC-Siam-conc) core.device.BatchRunner's
first-batch trial among plain torch, channels_last, bfloat16 autocast where the CPU has native bf16, and ONNX
Runtime; for the diffusion UNets core.device.FastForward's choice between plain torch and ONNX Runtime (the
samplers' denoiser calls and IDGBR's pair of CFG passes, time step and conditions inputs of the export). ONNX
Runtime gets the whole batch in one call (exported with a dynamic batch, every tensor an input). Interleaved repeats, best of each.
"""
from __future__ import annotations

import argparse
from typing import Callable

import torch

from benchmarks.harness import step, timed
from core.catalog import starter_model_dir
from core.device import (CPU_PATH_ENV, BatchRunner, FastForward, describe_device, native_bf16, onnx_session,
                         ort_run, requested_cpu_path)

Case = tuple[torch.nn.Module, tuple[torch.Tensor, ...], Callable]


def cases(quick: bool) -> dict[str, Case]:
    """Each family's starter on the batch its pipeline runs (random inputs: timing does not depend on them)."""
    from core.change.pipeline import load_changedet
    from core.diffusion.sampling import unet_sample
    from core.fusion.prior import load_prior
    from core.fusion.sampler import prior_eps
    from core.oilspill.generate import load_jointnet
    from core.oilspill.jointnet import joint_prediction
    from core.oilspill.pipeline import load_saross
    from core.refinement.model import guided_eps, load_refiner, noise_scheduler
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
    t = torch.tensor(500)
    size = refine_card.tile_size
    with torch.inference_mode():
        image = torch.rand(tiles, 3, size, size, generator=g) * 2 - 1
        coarse = torch.randint(0, len(refine_card.classes), (tiles, size, size), generator=g)
        latents = refiner.encode_image(image)
        conditions = refiner.condition_features(latents, refiner.encode_labels(coarse))
    sar_size, classes = sar_card.architecture["sample_size"], sar_card.architecture["classes"]
    return {
        "segmenter": (segmenter, (torch.randn(tiles, 3, 256, 256, generator=g),), softmax),
        "saross": (saross, (torch.randn(tiles, 1, 256, 256, generator=g),), softmax),
        "fcsiam_conc": (change, (torch.randn(tiles, 6, 128, 128, generator=g),),
                        lambda m, x: torch.softmax(m(x[:, :3], x[:, 3:]), dim=1)),
        "fusion_prior": (prior, (torch.randn(2, 3, 256, 256, generator=g), torch.full((2,), 500)), prior_eps),
        "satsynth": (satsynth, (torch.randn(tiles, 6, 64, 64, generator=g), t), unet_sample),
        "sar_jointnet": (jointnet, (torch.randn(tiles, 1 + classes, sar_size, sar_size, generator=g), t),
                         joint_prediction),
        "idgbr": (refiner, (torch.randn(latents.shape, generator=g), noise_scheduler().timesteps[:1].reshape(()),
                            *conditions.image, *conditions.coarse), guided_eps),
    }


RASTER_FAMILIES = ("segmenter", "saross", "fcsiam_conc")


def bench(cfg: argparse.Namespace) -> dict:
    repeats = 2 if cfg.quick else 5
    rows = {}
    for name, (model, inputs, forward) in cases(cfg.quick).items():
        with step(f"{name}: our path and ONNX Runtime on {list(inputs[0].shape)}"):
            rows[name] = compare(name, model, inputs, forward, repeats)
    return {"ort_over_torch": {name: row["ort_over_torch"] for name, row in rows.items()}, "families": rows,
            "settings": {"device": describe_device(torch.device("cpu")), "repeats": repeats,
                         "native_bf16": native_bf16(), "requested": requested_cpu_path(), "override": CPU_PATH_ENV}}


@torch.inference_mode()
def compare(name: str, model: torch.nn.Module, inputs: tuple, forward: Callable, repeats: int) -> dict:
    model.eval()
    if name in RASTER_FAMILIES:
        runner = BatchRunner(model, torch.device("cpu"))
        runner(inputs[0], forward)   # the first-batch trial picks the path
        ours, chosen = (lambda: runner(inputs[0], forward)), runner.cpu_path.name
    else:
        fast = FastForward(model, forward, calls=1000)   # a whole sampling run's
        fast(*inputs)   # the first call exports, tries and chooses
        ours, chosen = (lambda: fast(*inputs)), fast.choice
    session = onnx_session(model, forward, inputs)
    onnx_run = lambda: ort_run(session, inputs)   # noqa: E731
    ours(), onnx_run()   # warm-up
    ours_s, onnx_s = [], []
    for _ in range(repeats):
        ours_s.append(timed(ours))
        onnx_s.append(timed(onnx_run))
    return {"ort_over_torch": round(min(ours_s) / min(onnx_s), 3), "our_path": chosen,
            "seconds": {"ours": round(min(ours_s), 4), "onnxruntime": round(min(onnx_s), 4)},
            "batch": list(inputs[0].shape)}

"""`make bench`: performance figures -> benchmarks/results/latest.json.

Every benchmark returns a dict stored under its own top-level section; a run replaces only
the sections it ran, so figures written by other benchmarks survive. Figures are ratios
measured within one run, so they compare across machines; other load on the machine still
adds noise, which interleaved best-of-N timings damp.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from benchmarks.harness import THROUGHPUT_TARGET, forward_all, step, timed
from core.checkpoint import load_card, load_into
from core.data.scenes import SCENE_CRS, make_scene, scene_transform, write_scene
from core.device import describe_device, resolve_device
from core.raster import GeoTiffWriter, open_raster, read_window
from core.segmentation.model import build_segmenter
from core.segmentation.pipeline import SegmentParams, segment_raster
from core.tiling import TileGrid, pad_tile

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

RSS_FLAT_LIMIT = 1.15     # peak memory may grow by <= 15% from an 8k to a 16k raster
# A 16k raster takes minutes on a CPU: big tiles in batches of 8 cut the per-tile overhead
# and the overlap recomputed (stride 480 of 512 instead of 224 of 256).
RSS_TILE, RSS_BATCH = 512, 8


def bench_tiling(cfg: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="rsd-bench-") as tmp:
        return {**tiling_throughput(cfg, Path(tmp)), **tiling_rss(cfg, Path(tmp))}


def bench_satsynth(cfg: argparse.Namespace) -> dict:
    from benchmarks.satsynth import bench
    return bench(cfg)


def bench_idgbr(cfg: argparse.Namespace) -> dict:
    from benchmarks.idgbr import bench
    return bench(cfg)


def bench_sar(cfg: argparse.Namespace) -> dict:
    from benchmarks.sar import bench
    return bench(cfg)


def bench_fusion(cfg: argparse.Namespace) -> dict:
    from benchmarks.fusion import bench
    return bench(cfg)


def bench_rdfmig(cfg: argparse.Namespace) -> dict:
    from benchmarks.rdfmig import bench
    return bench(cfg)


def bench_onnx(cfg: argparse.Namespace) -> dict:
    from benchmarks.cpu_paths import bench
    return bench(cfg)


def bench_roofline(cfg: argparse.Namespace) -> dict:
    from benchmarks.roofline import bench
    return bench(cfg)


def bench_finetune(cfg: argparse.Namespace) -> dict:
    from benchmarks.finetune import bench
    return bench(cfg)


def bench_synthesis_payoff(cfg: argparse.Namespace) -> dict:
    from benchmarks.payoff import bench
    return bench(cfg)


def bench_synthesis_payoff_full(cfg: argparse.Namespace) -> dict:
    from benchmarks.payoff import bench_full
    return bench_full(cfg)


BENCHMARKS = {"tiling": bench_tiling, "satsynth": bench_satsynth, "idgbr": bench_idgbr, "sar": bench_sar,
              "fusion": bench_fusion, "rdfmig": bench_rdfmig, "roofline": bench_roofline, "onnx": bench_onnx,
              "finetune": bench_finetune, "synthesis_payoff": bench_synthesis_payoff,
              "synthesis_payoff_full": bench_synthesis_payoff_full}


# --- tiling: end-to-end throughput against the bare model ----------------------------------------

def tiling_throughput(cfg: argparse.Namespace, tmp: Path) -> dict:
    """segment_raster's pixel rate over the model's alone on the same tiles and batches:
    the share of time the pipeline spends on actual inference."""
    size, repeats = (768, 1) if cfg.quick else (2048, 5)
    scene = tmp / "scene.tif"
    with step(f"procedural scene {size} x {size}"):
        write_scene(scene, tmp / "scene_labels.tif", size, size, seed=11)
    params = SegmentParams(str(scene), str(tmp / "classes.tif"), model_dir=cfg.model, device=cfg.device)
    card = load_card(cfg.model)
    tile = card.tile_size
    grid = TileGrid(size, size, tile, min(params.overlap, tile // 2))
    batches = load_batches(scene, card, grid, params.batch_size)
    device = resolve_device(cfg.device)
    model = load_into(build_segmenter(card.architecture), cfg.model).to(device).eval()
    forward_all(model, batches[:1], device)  # warm-up: first-call allocations and kernel selection

    pipeline_s, model_s = [], []
    for i in range(repeats):  # interleaved, best of each: a busy machine slows both alike
        with step(f"segment_raster, run {i + 1}/{repeats}"):
            pipeline_s.append(timed(lambda: segment_raster(params)))
        with step(f"model alone, run {i + 1}/{repeats}"):
            model_s.append(timed(lambda: forward_all(model, batches, device)))
    pixels = size * size
    ratio = min(model_s) / min(pipeline_s)
    return {
        "throughput_ratio": round(ratio, 3),
        "throughput_px_per_s": {"segment_raster": round(pixels / min(pipeline_s)),
                                "model_only": round(pixels / min(model_s))},
        "throughput_target": THROUGHPUT_TARGET,
        "throughput_pass": ratio >= THROUGHPUT_TARGET,
        "throughput_settings": {"raster_px": size, "tile": tile, "overlap": grid.overlap,
                                "batch_size": params.batch_size, "tiles": len(grid), "repeats": repeats,
                                "device": describe_device(device)},
    }


def load_batches(path: Path, card, grid: TileGrid, batch_size: int) -> list[torch.Tensor]:
    """The pipeline's tiles, normalised, padded and batched (in grid order) as it does, held
    in memory so that timing them measures the model only."""
    mean = np.asarray(card.normalization.offset, dtype=np.float32)[:, None, None]
    std = np.asarray(card.normalization.scale, dtype=np.float32)[:, None, None]
    bands = list(range(1, len(card.bands) + 1))
    inputs = []
    with open_raster(path) as src:
        for t in grid:
            data, valid = read_window(src, Window(t.col, t.row, t.width, t.height), bands)
            inputs.append(pad_tile(np.where(valid, (data - mean) / std, 0.0).astype(np.float32), grid.tile))
    return [torch.from_numpy(np.stack(inputs[i:i + batch_size])) for i in range(0, len(inputs), batch_size)]


# --- tiling: peak memory against raster size ----------------------------------------------------

def tiling_rss(cfg: argparse.Namespace, tmp: Path) -> dict:
    """Peak RSS of segment_raster on a raster and on one 4x its area, each in a fresh process:
    a streaming pipeline needs about the same memory for both."""
    sizes = {"2k": 2048, "4k": 4096} if cfg.quick else {"8k": 8192, "16k": 16384}
    block, _ = make_scene(1024, 1024, seed=5)
    peaks, seconds = {}, {}
    for label, size in sizes.items():
        need = 2 * block.shape[0] * size * size  # the raw input size, twice: input + output with room
        free = shutil.disk_usage(tmp).free
        if free < need:
            raise SystemExit(f"tiling: {need / 1e9:.1f} GB free needed in {tmp} for the {label} raster, "
                             f"{free / 1e9:.1f} GB available.")
        mosaic, output = tmp / f"mosaic_{label}.tif", tmp / f"classes_{label}.tif"
        with step(f"write {size} x {size} input raster"):
            write_mosaic(mosaic, block, size)
        with step(f"segment_raster {size} x {size} in a child process"):
            child = run_child(SegmentParams(str(mosaic), str(output), model_dir=cfg.model, device=cfg.device,
                                            tile_size=RSS_TILE, batch_size=RSS_BATCH))
        mosaic.unlink()
        output.unlink()
        peaks[label], seconds[label] = round(child["peak_rss_mb"], 1), round(child["seconds"], 1)
    small, large = peaks.values()
    ratio = large / small
    return {
        "peak_rss_mb": peaks,
        "rss_flat_ratio": round(ratio, 3),
        "rss_flat_target": RSS_FLAT_LIMIT,
        "rss_flat_pass": ratio <= RSS_FLAT_LIMIT,
        "rss_seconds": seconds,
        "rss_settings": {"tile": RSS_TILE, "batch_size": RSS_BATCH, "overlap": SegmentParams.overlap,
                         "device": describe_device(resolve_device(cfg.device)),
                         "input": "1024 px procedural scene repeated, uint8 RGB, tiled deflate GeoTIFF"},
    }


def write_mosaic(path: Path, block: np.ndarray, size: int) -> None:
    """Repeat one scene over a size x size GeoTIFF block by block: the raster is never in memory."""
    n = block.shape[1]
    with GeoTiffWriter(path, width=size, height=size, count=block.shape[0], dtype="uint8",
                       crs_wkt=rasterio.crs.CRS.from_string(SCENE_CRS).to_wkt(),
                       transform=scene_transform(size, size, seed=5)) as out:
        for row in range(0, size, n):
            for col in range(0, size, n):
                out.write(block[:, :size - row, :size - col], row=row, col=col)


def run_child(params: SegmentParams) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.run", "--rss-child", json.dumps(asdict(params))]
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def rss_child(spec: str) -> None:
    result = segment_raster(SegmentParams(**json.loads(spec)))
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "seconds": result.seconds}))


def peak_rss_mb() -> float:
    """This process's VmHWM (Linux). Not ru_maxrss: through fork/vfork + exec Linux carries the
    parent's peak into the child's ru_maxrss, so a big parent would hide the child's own figure."""
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024


# --- harness ------------------------------------------------------------------------------------

def pick_model(explicit: str | None) -> tuple[str, bool]:
    """(model dir, is the shipped starter): an explicit --model wins, else the starter."""
    if explicit:
        return explicit, False
    starter = Path(SegmentParams("", "").resolved_model_dir())
    if (starter / "model.json").is_file():
        return str(starter), True
    raise SystemExit(f"No starter model in {starter} (run `make starter-models`); pass --model DIR.")


def meta(cfg: argparse.Namespace, sections: list[str], starter: bool) -> dict:
    card = load_card(cfg.model)
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sections": sections,
        "quick": cfg.quick,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "device": describe_device(resolve_device(cfg.device)),
        "model": {"name": card.name, "dir": cfg.model, "starter": starter, "tile_size": card.tile_size},
    }


def write_results(path: Path, sections: dict) -> None:
    """Merge into the existing file (other benchmarks' sections stay) and swap it in atomically."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(sections)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def print_table(sections: dict) -> None:
    rows = list(flatten(sections))
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def flatten(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS),
                        help="run this section only (repeatable)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes to smoke-test the harness; writes results/quick.json")
    parser.add_argument("--model", help="model directory (default: the shipped starter model)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--output", type=Path, help="results file (default: results/latest.json)")
    parser.add_argument("--rss-child", metavar="PARAMS_JSON", help=argparse.SUPPRESS)
    cfg = parser.parse_args(argv)
    if cfg.rss_child:
        rss_child(cfg.rss_child)
        return

    cfg.model, starter = pick_model(cfg.model)
    names = cfg.only or list(BENCHMARKS)
    sections = {}
    for name in names:
        print(f"{name}:", flush=True)
        started = time.perf_counter()
        sections[name] = BENCHMARKS[name](cfg)
        print(f"{name}: {time.perf_counter() - started:.1f} s", flush=True)
    sections["meta"] = meta(cfg, names, starter)
    output = cfg.output or RESULTS / ("quick.json" if cfg.quick else "latest.json")
    write_results(output, sections)
    print()
    print_table(sections)
    print(f"\n-> {output}")


if __name__ == "__main__":
    main()

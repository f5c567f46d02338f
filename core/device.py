"""Device choice, the CPU fast path and out-of-memory recovery shared by inference pipelines.

On a CPU the same model runs several times faster in another form on some machines and slower on others:
channels_last convolutions, bfloat16 autocast (only fast where the CPU has native bf16: AVX512-BF16 or AMX;
elsewhere it is emulated) or ONNX Runtime (optional dependency). `BatchRunner` therefore tries them on the
first batch of image tiles it runs, keeps those whose outputs agree with plain torch (class argmax on >= 99.5% of the
pixels; relative error <= 1% for outputs without a class axis) and runs everything with the fastest (the choice
is remembered for the same model, batch shape and thread count for the rest of the process).
RS_DIFFUSION_CPU_PATH=torch|channels_last|bf16|onnxruntime forces one; the choice is logged. Tiny tiles
(under 128 x 128 px) and batches that are not images (the refiner's row indices) stay on plain torch: there the
trial costs more than any gain.
"""
from __future__ import annotations

import copy
import io
import os
import re
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

from core.catalog import DEVICE_CHOICES
from core.progress import Progress

CPU_PATH_ENV = "RS_DIFFUSION_CPU_PATH"
CPU_PATHS = ("auto", "torch", "channels_last", "bf16", "onnxruntime")
TRIAL_MIN_PIXELS = 128 * 128       # per tile; below, plain torch
ARGMAX_AGREEMENT = 0.995           # share of pixels whose class must not change
RELATIVE_ERROR = 0.01              # for outputs without a class axis
MIN_SPEEDUP = 1.1                  # leave plain torch only for a clear gain (timings are noisy)
TRIAL_ROUNDS = 3                   # interleaved timing rounds of the first-batch trial
MIN_SAMPLER_CALLS = 20             # shorter sampling chains stay on plain torch (FastForward)
Forward = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]
_CHOSEN: dict[tuple, str] = {}     # (model, tile shape, threads) -> path, for later runners in this process



def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without one is an error, not a silent CPU run."""
    name = (name or "auto").lower()
    if name not in DEVICE_CHOICES and not name.startswith("cuda:"):
        raise ValueError(f"Unknown device '{name}'; use one of {', '.join(DEVICE_CHOICES)}.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("Device 'cuda' was requested but no CUDA GPU is available; use 'auto' or 'cpu'.")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def requested_cpu_path() -> str:
    name = (os.environ.get(CPU_PATH_ENV) or "auto").strip().lower()
    if name not in CPU_PATHS:
        raise ValueError(f"{CPU_PATH_ENV}={name!r} is not a CPU path; use one of {', '.join(CPU_PATHS)}.")
    return name


def training_autocast_dtype(device: torch.device, bf16_supported: bool | None = None) -> torch.dtype | None:
    """The trainers' mixed-precision dtype: bfloat16 on GPUs that have it (float32's range, so no loss scaling),
    float16 with a GradScaler on older GPUs, None (float32) on the CPU."""
    if device.type != "cuda":
        return None
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    return torch.bfloat16 if bf16_supported else torch.float16


def native_bf16() -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512-BF16 or AMX tiles), read from /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


class CpuPath:
    """One form of running `forward(model, x)` on the CPU; `forward` comes with every call (pipelines pass a
    closure over the batch's own values)."""

    def __init__(self, name: str, model: torch.nn.Module):
        self.name = name
        self.model = model
        if name == "channels_last":   # a copy: the plain model stays as it is
            self.model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        self.session = None
        self.traced_for: tuple | None = None

    def run(self, forward: Forward, x: torch.Tensor) -> torch.Tensor:
        if self.name == "channels_last" and x.dim() == 4:
            return forward(self.model, x.contiguous(memory_format=torch.channels_last)).contiguous()
        if self.name == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return forward(self.model, x).float()
        if self.name == "onnxruntime" and x.dim() == 4:
            return self.run_onnx(forward, x)
        return forward(self.model, x)

    def run_onnx(self, forward: Forward, x: torch.Tensor) -> torch.Tensor:
        """forward traced once with a dynamic batch axis and run by ONNX Runtime over the whole batch; traced again
        when a call brings another forward (other code, or a closure over other values), since the trace freezes
        them."""
        signature = (forward_signature(forward), tuple(x.shape[1:]))
        if signature != self.traced_for:
            self.session, self.traced_for = onnx_session(self.model, forward, (x[:1],)), signature
        return ort_run(self.session, (x,))


def model_fingerprint(model: torch.nn.Module) -> tuple:
    """This model, not its class: its type and the sum of its weights."""
    return type(model).__name__, sum(float(p.detach().double().sum()) for p in model.parameters())


def forward_signature(forward: Callable) -> tuple:
    """What a trace of `forward` freezes: its code and the objects its closure holds."""
    return forward.__code__, tuple(id(c.cell_contents) for c in forward.__closure__ or ())


def onnx_session(model: torch.nn.Module, forward: Callable, examples: tuple[torch.Tensor, ...]):
    """ONNX Runtime session of forward(model, *inputs): inputs input0.., every axis 0 of a tensor with axes
    dynamic (the batch), so one export serves every batch size."""
    from core.onnx_export import ort_session

    class Closure(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return forward(self.model, *inputs)

    names = [f"input{i}" for i in range(len(examples))]
    dynamic = {name: {0: "batch"} for name, x in zip(names, examples) if x.dim() > 0}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(Closure().eval(), tuple(examples), buffer, dynamo=False, opset_version=17,
                          input_names=names, output_names=["output"], dynamic_axes={**dynamic, "output": {0: "batch"}})
    return ort_session(buffer.getvalue())


def ort_run(session, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    feed = {f"input{i}": x.detach().cpu().numpy() for i, x in enumerate(inputs)}
    return torch.from_numpy(session.run(None, feed)[0])


def outputs_agree(reference: torch.Tensor, other: torch.Tensor) -> bool:
    """Same classes on >= 99.5% of the pixels (outputs with a class axis), else relative error <= 1%."""
    if reference.shape != other.shape:
        return False
    if reference.dim() >= 3 and reference.shape[1] > 1:
        return (reference.argmax(1) == other.argmax(1)).float().mean().item() >= ARGMAX_AGREEMENT
    return ((other - reference).norm() / reference.norm().clamp_min(1e-12)).item() <= RELATIVE_ERROR


def best_seconds(run: Callable[[], object], repeats: int = 2) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


class BatchRunner:
    """Runs a model over a batch; on CUDA out-of-memory it halves the batch and retries,
    and below one sample it moves the model to the CPU and says so. On the CPU it runs the fastest
    agreeing form of the model (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, device: torch.device, progress: Progress | None = None):
        self.model = model.to(device).eval()
        self.device = device
        self.progress = progress or Progress()
        self.max_batch: int | None = None
        self.cpu_path: CpuPath | None = None
        self.requested = requested_cpu_path()

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor, forward: Forward) -> torch.Tensor:
        size = min(len(batch), self.max_batch or len(batch))
        outputs, start = [], 0
        while start < len(batch):
            chunk = batch[start:start + size]
            try:
                if self.device.type == "cpu":
                    outputs.append(self.run_on_cpu(chunk, forward).float())
                else:
                    outputs.append(forward(self.model, chunk.to(self.device)).float().cpu())
                start += len(chunk)
            except torch.cuda.OutOfMemoryError:
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if size > 1:
                    size //= 2
                    self.max_batch = size
                    self.progress.warning(f"GPU out of memory: retrying with batch size {size}.")
                elif self.device.type != "cpu":
                    self.progress.warning("GPU out of memory even with one tile: continuing on the CPU (slower).")
                    self.device = torch.device("cpu")
                    self.model = self.model.to(self.device)
                else:
                    raise
        return torch.cat(outputs)

    def run_on_cpu(self, chunk: torch.Tensor, forward: Forward) -> torch.Tensor:
        if self.cpu_path is None:
            self.cpu_path = self.choose_cpu_path(chunk, forward)
        return self.cpu_path.run(forward, chunk)

    def choose_cpu_path(self, tile: torch.Tensor, forward: Forward) -> CpuPath:
        """The requested path, or on 'auto' the fastest one that agrees with plain torch on the first batch (how
        each form scales with the batch differs, so the trial runs a whole one)."""
        if self.requested != "auto":
            if self.requested == "bf16" and not native_bf16():
                self.progress.warning("bfloat16 was requested but this CPU has no native bf16 (AVX512-BF16 or AMX): "
                                      "it is emulated and likely slower than float32.")
            self.progress.info(f"CPU path: {self.requested} (set by {CPU_PATH_ENV}).")
            if self.requested == "onnxruntime":
                from core.onnx_export import require_onnx
                require_onnx()
            return CpuPath(self.requested, self.model)
        plain = CpuPath("torch", self.model)
        if tile.dim() != 4 or tile.shape[-1] * tile.shape[-2] < TRIAL_MIN_PIXELS:
            return plain
        key = (model_fingerprint(self.model), tuple(tile.shape), torch.get_num_threads())
        if key in _CHOSEN:
            return CpuPath(_CHOSEN[key], self.model)
        chosen, note = self.trial(plain, tile, forward)
        _CHOSEN[key] = chosen.name
        self.progress.info(f"CPU path: {chosen.name} ({note}; {CPU_PATH_ENV}=torch turns it off).")
        return chosen

    def trial(self, plain: CpuPath, tile: torch.Tensor, forward: Forward) -> tuple[CpuPath, str]:
        """Every form that agrees with plain torch, timed in interleaved rounds (best of each: a busy moment
        slows one run only); the fastest wins if it beats plain torch by MIN_SPEEDUP."""
        reference = plain.run(forward, tile)
        candidates = ["channels_last"] + (["bf16"] if native_bf16() else [])
        try:
            import onnxruntime  # noqa: F401  (optional: tried only when installed)
            candidates.append("onnxruntime")
        except ImportError:
            pass
        paths, rejected = [plain], []
        for name in candidates:
            try:
                path = CpuPath(name, self.model)
                agrees = outputs_agree(reference, path.run(forward, tile))
                if agrees and name == "onnxruntime":   # a frozen input-dependent value or batch size shows here
                    mirrored = torch.cat([tile, tile.flip(-1)])   # another batch size, other values
                    agrees = outputs_agree(plain.run(forward, mirrored), path.run(forward, mirrored))
            except Exception as exc:   # a form this model cannot take (an operator, a layout): keep the others
                rejected.append(f"{name}: {type(exc).__name__}")
                continue
            if agrees:
                paths.append(path)
            else:
                rejected.append(f"{name}: outputs differ")
        seconds = {path.name: float("inf") for path in paths}
        for _ in range(TRIAL_ROUNDS):
            for path in paths:
                seconds[path.name] = min(seconds[path.name], best_seconds(lambda: path.run(forward, tile), 1))
        fastest = min(paths, key=lambda path: seconds[path.name])
        best = fastest if seconds[fastest.name] * MIN_SPEEDUP < seconds["torch"] else plain
        timings = ", ".join(f"{name} {s:.2f} s" for name, s in seconds.items())
        note = f"{seconds['torch'] / seconds[best.name]:.2f}x plain torch on the first batch: {timings}"
        return best, note + (f"; not used: {', '.join(rejected)}" if rejected else "")


class FastForward:
    """A sampler's denoiser call, forward(model, *tensors) -> tensor, on the fastest CPU form that agrees with plain
    torch: plain torch or ONNX Runtime (when installed), exported once per model and input shapes with every tensor
    an input (time steps and conditions change each call, so none may be frozen into the trace). The first call
    decides: it exports, runs both forms on its inputs and on the same inputs one time step later (integer
    tensors + 1: a value frozen into the trace shows there), refuses ONNX Runtime if it differs by more than 1%
    (relative), keeps it only when faster (best of 3 interleaved timings each), and returns the chosen form's
    output, so that a run and its repeat with the same seed give the same result. `forward` must use only its
    arguments. Elsewhere than on the CPU, with RS_DIFFUSION_CPU_PATH=torch, or for chains of fewer than
    MIN_SAMPLER_CALLS calls (the trial costs about as much as that many calls) it is plain torch."""

    def __init__(self, model: torch.nn.Module, forward: Callable[..., torch.Tensor], calls: int,
                 progress: Progress | None = None):
        self.model, self.forward = model, forward
        self.progress = progress or Progress()
        self.session = None
        self.choice: str | None = None
        device = next(model.parameters()).device
        requested = requested_cpu_path()
        self.forced = requested == "onnxruntime"
        if device.type != "cpu" or requested not in ("auto", "onnxruntime") or (
                requested == "auto" and calls < MIN_SAMPLER_CALLS):
            self.choice = "torch"
        elif requested == "auto":
            try:
                import onnxruntime  # noqa: F401  (optional: tried only when installed)
            except ImportError:
                self.choice = "torch"

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.choice is None:
            key = (model_fingerprint(self.model), forward_signature(self.forward),
                   tuple((tuple(x.shape[1:]), x.dtype) for x in inputs), torch.get_num_threads())
            cached = _FAST_SESSIONS.get(key)
            if cached and (cached[0] == "onnxruntime" or not self.forced):
                self.choice, self.session = cached
            else:
                self.choose(inputs, key)
        if self.choice == "onnxruntime":
            return ort_run(self.session, inputs).to(inputs[0].dtype)
        return self.forward(self.model, *inputs)

    def choose(self, inputs: tuple[torch.Tensor, ...], key: tuple) -> None:
        try:
            self.session = onnx_session(self.model, self.forward, inputs)
        except Exception as exc:   # an operator the exporter cannot take: stay on torch
            if self.forced:
                raise
            return self.decide("torch", key, f"the ONNX export failed ({type(exc).__name__})")
        if self.forced:
            return self.decide("onnxruntime", key, f"set by {CPU_PATH_ENV}")
        later = tuple(x + 1 if not x.is_floating_point() else x for x in inputs)
        ort_run(self.session, inputs)   # its first run sets up its memory: not timed
        timings, error = {"torch": [], "onnxruntime": []}, 0.0
        for case in (inputs, later, inputs):   # interleaved, best of each: a busy moment slows one call only
            start = time.perf_counter()
            reference = self.forward(self.model, *case)
            timings["torch"].append(time.perf_counter() - start)
            start = time.perf_counter()
            other = ort_run(self.session, case).to(reference.dtype)
            timings["onnxruntime"].append(time.perf_counter() - start)
            error = max(error, ((other - reference).norm() / reference.norm().clamp_min(1e-12)).item())
        if error > RELATIVE_ERROR:
            return self.decide("torch", key, f"ONNX Runtime's output differs by {error:.1%}")
        torch_s, ort_s = min(timings["torch"]), min(timings["onnxruntime"])
        # no margin (unlike BatchRunner's trial): a sampling chain repeats the same call, so even a small gain
        # adds up, and a choice within the timing noise costs as little as it could gain
        self.decide("onnxruntime" if ort_s < torch_s else "torch", key,
                    f"ONNX Runtime {ort_s:.3f} s, torch {torch_s:.3f} s per call, outputs within {error:.2%}")

    def decide(self, choice: str, key: tuple, note: str) -> None:
        self.choice = choice
        if choice == "torch":
            self.session = None
        _FAST_SESSIONS[key] = (choice, self.session)
        self.progress.info(f"Sampler CPU path: {choice} ({note}; {CPU_PATH_ENV}=torch turns it off).")


_FAST_SESSIONS: dict[tuple, tuple] = {}   # (model, forward, input shapes) -> (choice, session) for this process

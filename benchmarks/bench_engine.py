"""Baseline speed of the project's denoising loop against stock diffusers, on the same modules.

What is measured
    For each model size, two paths are timed on THE SAME tokenizer, text encoder, UNet and VAE
    objects (one `generator.load_model` call, fp32, CPU):

    * ours:  `generator.generate(model, [GenerationRequest(...)])`
    * stock: diffusers `StableDiffusionPipeline` built from those components with a fresh
             scheduler from `generator.make_scheduler`, `safety_checker=None`, default settings
             (only the progress bar is switched off).

    Both run one image, the same prompt, an empty negative prompt, classifier-free guidance 7.5,
    the same scheduler, step count and seed.

    * s/image: wall time of the whole call (prompt checks and text encoding, denoising loop,
      VAE decode, conversion to PIL; ours also encodes the PNG with its manifest).
    * s/step: from timestamps taken in the per-step callback (`callback=` for ours,
      `callback_on_step_end=` for stock; both fire right after `scheduler.step`). The mean of the
      intervals between consecutive callbacks, i.e. denoising iterations 2..n; the first is left
      out because its start is not visible from the callback. One iteration is one batched UNet
      call on (uncond, cond) plus the scheduler step. Note that PNDM with `skip_prk_steps` runs
      steps + 1 iterations (it repeats one timestep), and both paths do so.

How
    One untimed warm-up call per path, then `--repeats` timed rounds interleaved
    ours, stock, ours, stock, ... so slow drifts of the machine hit both paths alike. The table
    shows medians over the repeats and each path's speed-up, stock / path (> 1: faster than stock).

    --fast adds a third path on the same folder: bf16 weights, channels-last, SDPA and the UNet
    compiled for this size (generator.fastpath), with its PSNR against stock's fp32 image, one UNet
    call's FLOPs (torch.utils.flop_counter) and this run's bf16 peak (cpu_peak.measure), so the
    achieved FLOP/s is a fraction of a peak measured in the same process.

Model sizes
    * sd15: the SD 1.5 architecture (UNet, VAE, CLIP ViT-L/14 text tower, PNDM schedule) with
      random weights from a fixed seed, run at 256x256. The folder is built once and cached under
      `var/bench-models/` (its name carries a hash of the configs below). The tokenizer is the
      small one from `generator.tiny`; its token ids all fit the 49408-row embedding, and the
      text encoder's cost does not depend on which ids go in.
    * tiny: `make_tiny_model` with its default config, run at 64x64.

Usage
    python -m benchmarks.bench_engine --size both --steps 4 --repeats 3 [--scheduler pndm] [--json out.json]
    python -m benchmarks.bench_engine --size sd15 --fast    # + the fast path, FLOP/s and fraction of peak
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

# The script may read and set environment; the library may not. Set before the HF libraries import.
os.environ["HF_HUB_OFFLINE"] = "1"
ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402

from benchmarks import cpu_peak  # noqa: E402
from generator import SCHEDULERS, GenerationRequest, LoadedModel, generate, load_model, make_scheduler  # noqa: E402
from generator.fastpath import Bucket, optimize  # noqa: E402
from generator.text import make_clip_tokenizer  # noqa: E402
from generator.tiny import make_tiny_model, write_model_index  # noqa: E402

PROMPT = "a photo of a red house in the forest at night, detailed painting"
BUILTIN_PROMPT = "a small red circle in the top left on a white background"  # the built-in model's grammar
SEED = 1234
GUIDANCE_SCALE = 7.5
WEIGHT_SEED = 0
DEFAULT_CACHE_DIR = ROOT / "var" / "bench-models"

# Published Stable Diffusion 1.5 configs (runwayml/stable-diffusion-v1-5), written out.
SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SD15_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
SD15_TEXT_ENCODER = {  # CLIP ViT-L/14 text tower
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 768,
}
SD15_SCHEDULER = {  # PNDMScheduler; `clip_sample` and `set_alpha_to_one` are read by DDIM-style schedulers
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "prediction_type": "epsilon",
}
SIZES = {"sd15": 256, "tiny": 64, "builtin": 64}  # model → image side in pixels
BUILTIN_MODEL = ROOT / "models" / "shapes64"  # the trained default model (MODEL_CARD.md)


@dataclass(frozen=True)
class Settings:
    steps: int
    repeats: int
    scheduler: str
    guidance_scale: float = GUIDANCE_SCALE
    seed: int = SEED
    prompt: str = PROMPT


@dataclass
class Run:
    """One timed call of one path."""

    image_seconds: float
    step_ends: list[float]  # seconds from the call's start to the end of each denoising iteration
    cpu_seconds: float  # CPU time this process got during the call; far below threads x wall means a busy machine

    @property
    def step_seconds(self) -> float:
        """Mean length of iterations 2..n (the first one's start is not visible from the callback)."""
        return (self.step_ends[-1] - self.step_ends[0]) / (len(self.step_ends) - 1)


@dataclass
class PathResult:
    runs: list[Run] = field(default_factory=list)

    @property
    def step_seconds(self) -> float:
        return statistics.median(run.step_seconds for run in self.runs)

    @property
    def image_seconds(self) -> float:
        return statistics.median(run.image_seconds for run in self.runs)


@dataclass
class ModelResult:
    model: str
    resolution: int
    iterations: int  # denoising iterations per image (UNet calls)
    paths: dict[str, PathResult]  # "ours", "stock" and, with --fast, "fast"
    psnr: dict[str, float]  # each path's warm-up image against stock's (fp32), dB; inf = the same pixels
    max_pixel_difference: dict[str, int]
    compile_seconds: float | None = None  # the fast path's torch.compile of its bucket, once
    unet_gflop: float | None = None  # one UNet call on the (uncond, cond) batch
    peak_gflops: dict | None = None  # this run's cpu_peak.measure(bf16)


# ---- model folders -------------------------------------------------------------------------


def sd15_model_folder(cache_dir: Path) -> Path:
    """The random-weight SD 1.5-size folder; built on first use, then reused from `cache_dir`."""
    spec = [SD15_UNET, SD15_VAE, SD15_TEXT_ENCODER, SD15_SCHEDULER, WEIGHT_SEED]
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_dir / f"sd15-random-{key}"
    if folder.is_dir():
        print(f"using cached SD 1.5-size model {folder}", flush=True)
        return folder
    partial = folder.with_name(folder.name + ".partial")  # renamed only when complete
    shutil.rmtree(partial, ignore_errors=True)
    print(f"building SD 1.5-size model with random weights in {folder} (once) ...", flush=True)
    build_sd15_model(partial)
    partial.rename(folder)
    return folder


def build_sd15_model(out: Path) -> None:
    """Write the SD 1.5 architecture with random weights (seed WEIGHT_SEED) in diffusers layout."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    out.mkdir(parents=True)
    torch.manual_seed(WEIGHT_SEED)
    tokenizer = make_clip_tokenizer()
    if len(tokenizer) > SD15_TEXT_ENCODER["vocab_size"]:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, more than the text encoder's vocabulary")
    tokenizer.save_pretrained(out / "tokenizer")

    text_config = CLIPTextConfig(
        **SD15_TEXT_ENCODER,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    CLIPTextModel(text_config).save_pretrained(out / "text_encoder")
    UNet2DConditionModel(**SD15_UNET).save_pretrained(out / "unet")
    AutoencoderKL(**SD15_VAE).save_pretrained(out / "vae")
    # Written as the published file is: PNDMScheduler ignores `clip_sample`, but DDIM built from it needs False.
    (out / "scheduler").mkdir()
    scheduler_config = {"_class_name": "PNDMScheduler", "_diffusers_version": diffusers.__version__, **SD15_SCHEDULER}
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config, indent=2) + "\n")

    write_model_index(out, scheduler_class="PNDMScheduler")


@contextlib.contextmanager
def model_folder(size: str, cache_dir: Path, builtin: Path = BUILTIN_MODEL) -> Iterator[Path]:
    if size == "sd15":
        yield sd15_model_folder(cache_dir)
        return
    if size == "builtin":
        yield builtin
        return
    with tempfile.TemporaryDirectory(prefix="bench-tiny-") as tmp:
        yield make_tiny_model(Path(tmp) / "tiny")


# ---- the two paths -------------------------------------------------------------------------


def stock_pipeline(model: LoadedModel, scheduler_name: str) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline(
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=make_scheduler(scheduler_name, model.scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_ours(model: LoadedModel, side: int, settings: Settings) -> tuple[Run, np.ndarray]:
    request = GenerationRequest(
        prompt=settings.prompt,
        width=side,
        height=side,
        steps=settings.steps,
        guidance_scale=settings.guidance_scale,
        scheduler=settings.scheduler,
        seed=settings.seed,
    )
    stamps: list[float] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    result = generate(model, [request], callback=lambda state: stamps.append(time.perf_counter()))[0]
    end, cpu_end = time.perf_counter(), time.process_time()
    return Run(end - start, [s - start for s in stamps], cpu_end - cpu_start), np.asarray(result.images[0].image)


def run_stock(pipe: StableDiffusionPipeline, side: int, settings: Settings) -> tuple[Run, np.ndarray]:
    stamps: list[float] = []

    def on_step_end(pipe: StableDiffusionPipeline, step: int, timestep: int, tensors: dict) -> dict:
        stamps.append(time.perf_counter())
        return {}

    start, cpu_start = time.perf_counter(), time.process_time()
    image = pipe(
        prompt=settings.prompt,
        height=side,
        width=side,
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(settings.seed),
        callback_on_step_end=on_step_end,
    ).images[0]
    end, cpu_end = time.perf_counter(), time.process_time()
    return Run(end - start, [s - start for s in stamps], cpu_end - cpu_start), np.asarray(image)


def benchmark_model(
    model: LoadedModel, name: str, side: int, settings: Settings, fast: LoadedModel | None = None
) -> ModelResult:
    """Warm up every path once, then time them interleaved: ours, stock[, fast], ours, stock[, fast], ..."""
    pipe = stock_pipeline(model, settings.scheduler)
    paths: dict[str, Callable[[], tuple[Run, np.ndarray]]] = {
        "ours": lambda: run_ours(model, side, settings),
        "stock": lambda: run_stock(pipe, side, settings),
    }
    if fast is not None:
        paths["fast"] = lambda: run_ours(fast, side, settings)
    warm_up = {label: run() for label, run in paths.items()}
    reference = warm_up["stock"][1].astype(np.float64)
    psnr, difference = {}, {}
    for label, (_, image) in warm_up.items():
        mse = float(np.mean((image.astype(np.float64) - reference) ** 2))
        psnr[label] = math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
        difference[label] = int(np.abs(image.astype(np.float64) - reference).max())
    results = {label: PathResult() for label in paths}
    for repeat in range(settings.repeats):
        for label, run in paths.items():
            gc.collect()  # outside the timed call, so a collection does not land inside one
            timed, _ = run()
            results[label].runs.append(timed)
            print(
                f"  {name} repeat {repeat + 1}/{settings.repeats} {label:5s}: "
                f"{timed.step_seconds:.4g} s/step, {timed.image_seconds:.4g} s/image, "
                f"cpu/wall {timed.cpu_seconds / timed.image_seconds:.2f}",
                flush=True,
            )
    return ModelResult(
        model=name,
        resolution=side,
        iterations=len(warm_up["ours"][0].step_ends),
        paths=results,
        psnr=psnr,
        max_pixel_difference=difference,
    )


def load_fast(path: Path, side: int, compile_unet: bool, decoder: str) -> tuple[LoadedModel, float]:
    """The fast path: bf16 weights, channels-last, SDPA, the UNet compiled for one (side, side, 1 image) bucket."""
    model = load_model(path, device="cpu", dtype="bf16", decoder=decoder)
    started = time.perf_counter()
    optimize(model, channels_last=True, buckets=[Bucket(side, side, 1)] if compile_unet else [])
    return model, time.perf_counter() - started


def unet_gflop(model: LoadedModel, side: int, context_tokens: int) -> float:
    """FLOPs of one UNet call on a guidance batch of 2, counted by torch's FlopCounterMode.

    Attention runs on SDPA's math backend here, so its matmuls are counted too (the fused CPU kernel is not).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    factor = model.vae_scale_factor
    sample = torch.zeros(2, model.unet.config.in_channels, side // factor, side // factor, dtype=model.dtype)
    context = torch.zeros(2, context_tokens, model.unet.config.cross_attention_dim, dtype=model.dtype)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), sdpa_kernel([SDPBackend.MATH]), counter:
        model.unet(sample, torch.tensor(500), encoder_hidden_states=context)
    return counter.get_total_flops() / 1e9


# ---- report --------------------------------------------------------------------------------


def machine_info() -> dict:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import diffusers
    import transformers

    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "load_average_at_start": load_average(),
    }


CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")  # what decides fp32/bf16 speed


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """Which of CPU_FLAGS this CPU has (bf16 is fast only with avx512_bf16 or amx_bf16; BENCHMARKS.md)."""
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        return []
    return [flag for flag in CPU_FLAGS if flag in flags]


def load_average() -> str:
    """The 1, 5 and 15 minute load averages; on a quiet machine they sit near the torch thread count."""
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "unknown"


def markdown_table(results: list[ModelResult]) -> str:
    lines = [
        "| model | resolution | path | s/step | s/image | step speed-up vs stock | image speed-up vs stock "
        "| PSNR vs stock fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        stock = r.paths["stock"]
        for label, path in r.paths.items():
            lines.append(
                f"| {r.model} | {r.resolution}x{r.resolution} | {label} | {path.step_seconds:.4g} "
                f"| {path.image_seconds:.4g} | {stock.step_seconds / path.step_seconds:.2f}× "
                f"| {stock.image_seconds / path.image_seconds:.2f}× | {r.psnr[label]:.1f} dB |"
            )
    return "\n".join(lines)


def flops_lines(results: list[ModelResult]) -> list[str]:
    lines = []
    for r in results:
        if r.unet_gflop is None or "fast" not in r.paths:
            continue
        achieved = r.unet_gflop / r.paths["fast"].step_seconds
        stock = r.unet_gflop / r.paths["stock"].step_seconds
        peak = r.peak_gflops["matmul"]
        lines.append(
            f"{r.model}: one UNet call (guidance batch 2) = {r.unet_gflop:.1f} GFLOP; fast path {achieved:.0f} GFLOP/s "
            f"= {achieved / peak:.0%} of this run's bf16 matmul peak ({peak:.0f} GFLOP/s; 3×3 conv channels-last "
            f"{r.peak_gflops['conv_channels_last']:.0f}); stock fp32 {stock:.0f} GFLOP/s"
        )
        if r.compile_seconds is not None:
            lines.append(f"{r.model}: fast path set-up (torch.compile of one bucket) {r.compile_seconds:.0f} s, once")
    return lines


def to_json(machine: dict, settings: Settings, command: str, results: list[ModelResult]) -> dict:
    def path_json(path: PathResult) -> dict:
        return {
            "median_step_seconds": path.step_seconds,
            "median_image_seconds": path.image_seconds,
            "runs": [{**asdict(run), "step_seconds": run.step_seconds} for run in path.runs],
        }

    return {
        "command": command,
        "machine": machine,
        "settings": asdict(settings),
        "prompt": settings.prompt,
        "results": [
            {
                "model": r.model,
                "resolution": r.resolution,
                "iterations": r.iterations,
                "psnr_vs_stock": {k: (None if math.isinf(v) else v) for k, v in r.psnr.items()},
                "max_pixel_difference_vs_stock": r.max_pixel_difference,
                "compile_seconds": r.compile_seconds,
                "unet_gflop": r.unet_gflop,
                "peak_gflops_bf16": r.peak_gflops,
                "paths": {label: path_json(path) for label, path in r.paths.items()},
                "step_speedup_vs_stock": {
                    label: r.paths["stock"].step_seconds / path.step_seconds for label, path in r.paths.items()
                },
            }
            for r in results
        ],
    }


# ---- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size", choices=["sd15", "tiny", "both", "builtin"], default="both",
        help="both: sd15 and tiny; builtin: the trained default model (use its scheduler, e.g. --scheduler ddim)",
    )
    parser.add_argument("--model", type=Path, default=BUILTIN_MODEL,
                        help="with --size builtin: the model folder (default models/shapes64)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per image (at least 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per path, after one warm-up")
    parser.add_argument("--scheduler", choices=list(SCHEDULERS), default="pndm")
    parser.add_argument("--json", type=Path, help="write raw results here")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="where the SD 1.5-size model is kept")
    parser.add_argument("--fast", action="store_true",
                        help="add the fast path: bf16, channels-last, SDPA, torch.compile (and FLOP/s vs peak)")
    parser.add_argument("--no-compile", action="store_true", help="the fast path without torch.compile")
    parser.add_argument("--decoder", choices=["vae", "tiny"], default="vae",
                        help="the fast path's decoder (tiny: the model's tiny_vae/, builtin only)")
    args = parser.parse_args(argv)
    if args.model != BUILTIN_MODEL and args.size != "builtin":
        parser.error("--model applies to --size builtin only")
    if args.steps < 2:
        parser.error("--steps must be at least 2: the step time is measured between consecutive steps")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    prompt = BUILTIN_PROMPT if args.size == "builtin" else PROMPT
    settings = Settings(steps=args.steps, repeats=args.repeats, scheduler=args.scheduler, prompt=prompt)
    sizes = ["sd15", "tiny"] if args.size == "both" else [args.size]
    command = "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])
    machine = machine_info()

    results = []
    for size in sizes:
        with model_folder(size, args.cache_dir, args.model) as path:
            model = load_model(path, device="cpu", dtype="fp32")
            fast, compile_seconds = None, None
            if args.fast:
                fast, compile_seconds = load_fast(path, SIZES[size], not args.no_compile, args.decoder)
            result = benchmark_model(model, size, SIZES[size], settings, fast)
            if args.fast:
                result.compile_seconds = None if args.no_compile else compile_seconds
                result.unet_gflop = unet_gflop(model, SIZES[size], model.tokenizer.model_max_length)
                result.peak_gflops = cpu_peak.measure(torch.bfloat16)
            results.append(result)
        del model, fast
        gc.collect()

    print()
    print(f"torch {machine['torch']}, diffusers {machine['diffusers']}, transformers {machine['transformers']}")
    machine["load_average_at_end"] = end_load = load_average()
    print(f"CPU: {machine['cpu']}, {machine['cpu_count']} cores, torch threads: {machine['torch_threads']}, "
          f"flags: {' '.join(machine['cpu_flags']) or 'none of ' + ' '.join(CPU_FLAGS)}")
    print(f"load average (1/5/15 min): {machine['load_average_at_start']} at start, {end_load} at end")
    print(
        f"scheduler {settings.scheduler}, {settings.steps} steps, guidance {settings.guidance_scale}, "
        f"1 image, medians of {settings.repeats} interleaved repeats after 1 warm-up; speed-up = stock / path"
    )
    if args.fast:
        print(f"fast path: bf16, channels-last, SDPA, {'no compile' if args.no_compile else 'torch.compile'}, "
              f"decoder {args.decoder}")
    for r in results:
        print(
            f"{r.model}: {r.iterations} denoising iterations per image; max pixel difference vs stock "
            + ", ".join(f"{label} {d}" for label, d in r.max_pixel_difference.items())
        )
    print()
    print(markdown_table(results))
    for line in flops_lines(results):
        print(line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(to_json(machine, settings, command, results), indent=2) + "\n")
        print(f"\nraw results: {args.json}")


if __name__ == "__main__":
    main()

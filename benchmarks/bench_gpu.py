"""The project's loop against stock diffusers on a GPU: SD 1.5 architecture, 512², fp16, SDPA (docs/gpu.md).

What is measured
    The same modules as benchmarks/bench_engine.py (its random-weight SD 1.5-size folder, its two paths and
    their timing), loaded with `generator.load_model(..., device, dtype)`: one image, classifier-free guidance
    7.5, PNDM (SD 1.5's scheduler), the same prompt and seed, at two step counts (50 and 20).

    * s/image: wall time of the whole call, text encoding to PIL image (ours also writes the PNG and its
      manifest, and keeps the last prompts' embeddings, so its repeats skip the text encoder). Converting to PIL
      copies the image to the host, so the time includes all GPU work.
    * s/step: (s/image at 50 steps - s/image at 20) / (their difference in UNet iterations): one denoising
      iteration, free of the fixed costs (text encoder, VAE, PNG) and with no synchronisation inside the loop.

Variants, one per process (scripts/gpu_check.py runs them in turn while its time budget lasts):
    eager              stock, ours, and ours on a second copy of the model in channels-last memory (what the
                       worker runs by default, GENERATOR_CHANNELS_LAST), interleaved; PSNR and largest pixel
                       difference of each against stock's image
    stock-cudagraphs   stock with diffusers' recipe: UNet and VAE channels-last, the UNet
                       torch.compile(mode="reduce-overhead", fullgraph=True) (inductor with CUDA graphs)
    ours-compile       ours with the worker's GENERATOR_COMPILE path: generator.fastpath.optimize for one 512² image
                       bucket (inductor, frozen weights, channels-last), compiled before the first call
    ours-cudagraphs    the same with inductor's CUDA graphs on (what mode="reduce-overhead" adds)
    A compiled variant's compile_seconds: its set-up (optimize) plus its first call less a timed call's median.

Usage
    python -m benchmarks.bench_gpu --variant eager --json out/gpu-eager.json                  # on a GPU
    python -m benchmarks.bench_gpu --device cpu --dtype fp32 --size tiny --steps 4 2 --repeats 1   # tiny, on a CPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # the script may set environment; the library may not

import torch  # noqa: E402

from benchmarks.bench_engine import (  # noqa: E402
    DEFAULT_CACHE_DIR,
    Run,
    Settings,
    benchmark_model,
    model_folder,
    run_ours,
    run_stock,
    stock_pipeline,
)
from generator import LoadedModel, load_model  # noqa: E402
from generator.fastpath import Bucket, optimize  # noqa: E402

SIDES = {"sd15": 512, "tiny": 64}  # model → image side in pixels
VARIANTS = ("eager", "stock-cudagraphs", "ours-compile", "ours-cudagraphs")
EAGER_LABELS = {"stock": "stock", "ours": "ours", "fast": "ours-channels-last"}  # bench_engine's labels → ours


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_entry(runs: list[Run]) -> dict:
    seconds = [run.image_seconds for run in runs]
    return {
        "iterations": len(runs[0].step_ends),
        "image_seconds": seconds,
        "median_image_seconds": statistics.median(seconds),
    }


def marginal_step_seconds(steps: dict[str, dict]) -> float | None:
    """Seconds per UNet iteration from the fewest and the most steps' medians (see the module docstring)."""
    entries = sorted(steps.values(), key=lambda entry: entry["iterations"])
    low, high = entries[0], entries[-1]
    if high["iterations"] == low["iterations"]:
        return None
    return (high["median_image_seconds"] - low["median_image_seconds"]) / (high["iterations"] - low["iterations"])


# ---- the variants -------------------------------------------------------------------------


def run_eager(folder: Path, args: argparse.Namespace, report: dict, write: Callable[[], None]) -> None:
    """stock, ours and ours channels-last, interleaved by bench_engine.benchmark_model, at each step count."""
    model = load_model(folder, device=args.device, dtype=args.dtype)
    channels_last = load_model(folder, device=args.device, dtype=args.dtype)
    optimize(channels_last, channels_last=True)  # the worker's default: channels-last, no compile
    side = SIDES[args.size]
    for steps in args.steps:
        settings = Settings(steps=steps, repeats=args.repeats, scheduler=args.scheduler)
        result = benchmark_model(model, args.size, side, settings, fast=channels_last)
        for label, path in result.paths.items():
            entry = step_entry(path.runs)
            entry["psnr_vs_stock"] = None if math.isinf(result.psnr[label]) else result.psnr[label]
            entry["max_pixel_difference_vs_stock"] = result.max_pixel_difference[label]
            report["paths"].setdefault(EAGER_LABELS[label], {"steps": {}})["steps"][str(steps)] = entry
        finish_paths(report)
        write()


def compiled_path(
    variant: str, model: LoadedModel, args: argparse.Namespace
) -> tuple[Callable[[Settings], Run], float]:
    """The variant's call and its set-up seconds (the compile, where it happens before the first call)."""
    side = SIDES[args.size]
    started = time.perf_counter()
    if variant == "stock-cudagraphs":
        pipe = stock_pipeline(model, args.scheduler)
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
        pipe.unet = torch.compile(pipe.unet, mode="reduce-overhead", fullgraph=True)
        return (lambda settings: run_stock(pipe, side, settings)[0]), time.perf_counter() - started
    if variant == "ours-compile":
        optimize(model, channels_last=True, buckets=[Bucket(side, side, 1)])
    elif variant == "ours-cudagraphs":
        with torch._inductor.config.patch({"triton.cudagraphs": True}):
            optimize(model, channels_last=True, buckets=[Bucket(side, side, 1)])
    else:
        raise ValueError(f"unknown variant {variant!r}; use one of {', '.join(VARIANTS)}")
    synchronize(model.device)
    return (lambda settings: run_ours(model, side, settings)[0]), time.perf_counter() - started


def run_compiled(folder: Path, args: argparse.Namespace, report: dict, write: Callable[[], None]) -> None:
    model = load_model(folder, device=args.device, dtype=args.dtype)
    run, setup_seconds = compiled_path(args.variant, model, args)
    print(f"  {args.variant}: set-up {setup_seconds:.1f} s", flush=True)
    path = report["paths"].setdefault(args.variant, {"steps": {}})
    path["setup_seconds"] = setup_seconds
    for index, steps in enumerate(args.steps):
        settings = Settings(steps=steps, repeats=args.repeats, scheduler=args.scheduler)
        first = run(settings)  # the compile (or its rest) and CUDA-graph capture land here
        if index == 0:
            path["first_call_seconds"] = first.image_seconds
        runs = []
        for repeat in range(args.repeats):
            runs.append(run(settings))
            print(f"  {args.variant} {steps} steps, repeat {repeat + 1}/{args.repeats}: "
                  f"{runs[-1].image_seconds:.4g} s/image", flush=True)
        path["steps"][str(steps)] = step_entry(runs)
        if index == 0:
            path["compile_seconds"] = setup_seconds + first.image_seconds - path["steps"][str(steps)][
                "median_image_seconds"]
        finish_paths(report)
        write()


def finish_paths(report: dict) -> None:
    for path in report["paths"].values():
        path["step_seconds"] = marginal_step_seconds(path["steps"])
    if torch.cuda.is_available():
        report["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30


# ---- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=VARIANTS, default="eager")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    parser.add_argument("--size", choices=list(SIDES), default="sd15",
                        help="sd15: SD 1.5 architecture, random weights, 512²; tiny: make_tiny_model, 64²")
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 20],
                        help="denoising steps per image, one figure each (two counts give s/step)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per path and step count")
    parser.add_argument("--scheduler", default="pndm")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="where the SD 1.5-size model is kept")
    parser.add_argument("--json", type=Path, help="write the figures here (after each step count)")
    args = parser.parse_args(argv)
    if min(args.steps) < 2:
        parser.error("--steps must be at least 2")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    import diffusers

    report = {
        "command": "python -m benchmarks.bench_gpu " + " ".join(sys.argv[1:] if argv is None else argv),
        "variant": args.variant,
        "device": args.device,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "model": args.size,
        "resolution": SIDES[args.size],
        "scheduler": args.scheduler,
        "guidance_scale": Settings(steps=2, repeats=1, scheduler=args.scheduler).guidance_scale,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "paths": {},
    }

    def write() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n")

    with model_folder(args.size, args.cache_dir) as folder:
        started = time.perf_counter()
        if args.variant == "eager":
            run_eager(folder, args, report, write)
        else:
            run_compiled(folder, args, report, write)
        report["seconds"] = time.perf_counter() - started
    write()

    print(f"\n{args.variant}: {report['device_name']}, {args.dtype}, {args.size} at {SIDES[args.size]}², "
          f"{args.scheduler}, guidance {report['guidance_scale']}, medians of {args.repeats}")
    for label, path in report["paths"].items():
        figures = ", ".join(
            f"{steps} steps {entry['median_image_seconds']:.4g} s" for steps, entry in path["steps"].items()
        )
        step = path.get("step_seconds")
        compiled = f", compile {path['compile_seconds']:.1f} s" if "compile_seconds" in path else ""
        print(f"  {label:20s} {figures}" + (f", {step * 1000:.2f} ms/step" if step else "") + compiled)


if __name__ == "__main__":
    main()

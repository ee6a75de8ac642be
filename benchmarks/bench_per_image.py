"""Seconds per image at SD 1.5 size: stock diffusers in fp32 against the project's engine, exact and with fewer
UNet evaluations, in one run.

    python -m benchmarks.bench_per_image --side 256 --repeats 3 --fewer 0.5:2 0.5:3 [--dtype auto|fp32] [--backend …]

Paths, all on the same SD 1.5-architecture weights (random, from benchmarks/bench_engine.py's configs; PNDM, 20 steps,
guidance 7.5, one image, the same prompt and seed):

- stock: diffusers' `StableDiffusionPipeline`, fp32, as it comes (SDPA attention);
- exact: `generate` on the engine `--dtype` picks (auto: generator.backends' choice for this CPU), channels-last, the
  UNet compiled with frozen weights for this size; every UNet evaluation runs;
- fewer C:K: the same engine with `guidance_cutoff=C` and `deep_cache_interval=K`, one path per `--fewer` pair.

One untimed warm-up call per path, then `--repeats` rounds interleaved (stock, exact, fewer…, stock, ...); medians.
Each path's PSNR is against stock's image. Achieved FLOP/s counts the UNet's FLOPs per image (full rows, shallow
rows, torch's FlopCounterMode) over the path's seconds per image, beside this run's matmul peak in that dtype
(benchmarks/cpu_peak.py); the VAE decode and text encoder are in the seconds but not in the FLOPs.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shlex
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchmarks import cpu_peak
from benchmarks.bench_engine import (  # noqa: I001
    DEFAULT_CACHE_DIR,
    GUIDANCE_SCALE,
    PROMPT,
    SEED,
    machine_info,
    sd15_model_folder,
    stock_pipeline,
)
from benchmarks.evals_quality import evaluations
from generator import GenerationRequest, generate, load_model
from generator.backends import choose_engine
from generator.deepcache import unet_full, unet_shallow
from generator.fastpath import Bucket, optimize


def unet_gflop(model, side: int, rows: int, shallow: bool) -> float:
    """GFLOP of one UNet call (full, or DeepCache's shallow step) on `rows` rows."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    unet = getattr(model.unet, "eager", model.unet)
    latent = side // model.vae_scale_factor
    sample = torch.zeros(rows, unet.config.in_channels, latent, latent, dtype=model.dtype)
    context = torch.zeros(rows, model.tokenizer.model_max_length, unet.config.cross_attention_dim, dtype=model.dtype)
    with torch.inference_mode(), sdpa_kernel([SDPBackend.MATH]):
        _, features = unet_full(unet, sample, 500, context)
        counter = FlopCounterMode(display=False)
        with counter:
            if shallow:
                unet_shallow(unet, sample, 500, context, features)
            else:
                unet_full(unet, sample, 500, context)
    return counter.get_total_flops() / 1e9


def timed(run) -> tuple[float, np.ndarray]:
    gc.collect()
    started = time.perf_counter()
    image = run()
    return time.perf_counter() - started, image


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_per_image", description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scheduler", default="pndm")
    parser.add_argument("--prompt", default=PROMPT, help="the built-in model's tokenizer takes 22 tokens")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--fewer", nargs="+", default=["0.5:2"], metavar="CUTOFF:INTERVAL",
                        help="one path per guidance_cutoff:deep_cache_interval pair (default 0.5:2)")
    parser.add_argument("--backend", default="auto", choices=["auto", "eager", "compile", "openvino"],
                        help="the engine's backend (default: generator.backends' choice)")
    parser.add_argument("--no-compile", action="store_true", help="the same as --backend eager")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--model", type=Path, help="another model folder (default: the SD 1.5-size one, built once)")
    parser.add_argument("--compile-cache", type=Path,
                        help="inductor's kernel cache and OpenVINO's converted models here, as a worker keeps them in "
                             "GENERATOR_COMPILE_CACHE_DIR (run twice: the second compile is a restart's)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    if args.compile_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(args.compile_cache)  # read when inductor first compiles
    engine = choose_engine("cpu", args.dtype, "eager" if args.no_compile else args.backend)
    print(f"engine: {engine.dtype} {engine.backend} ({engine.reason})", flush=True)
    folder = args.model or sd15_model_folder(args.cache_dir)
    stock_model = load_model(folder, dtype="fp32")
    pipe = stock_pipeline(stock_model, args.scheduler)
    fast = load_model(folder, dtype=engine.dtype)
    started = time.perf_counter()
    buckets = [Bucket(args.side, args.side, 1)] if engine.backend != "eager" else []
    compile_times = optimize(fast, channels_last=True, buckets=buckets, cond_only=True, deep_cache=True,
                             backend="openvino" if engine.backend == "openvino" else "compile",
                             cache_dir=args.compile_cache)
    compile_seconds = time.perf_counter() - started
    print(f"compiled in {compile_seconds:.0f} s: {compile_times}", flush=True)

    exact = GenerationRequest(prompt=args.prompt, width=args.side, height=args.side, steps=args.steps,
                              guidance_scale=GUIDANCE_SCALE, scheduler=args.scheduler, seed=SEED)
    fewer = {}
    for pair in args.fewer:
        cutoff, interval = pair.split(":")
        fewer[f"fewer {pair}"] = (float(cutoff), int(interval))

    def stock():
        return np.asarray(pipe(prompt=args.prompt, height=args.side, width=args.side, num_inference_steps=args.steps,
                               guidance_scale=GUIDANCE_SCALE, generator=torch.Generator("cpu").manual_seed(SEED),
                               ).images[0])

    def ours(request):
        return lambda: np.asarray(generate(fast, [request])[0].images[0].image)

    paths = {"stock": stock, "exact": ours(exact)}
    for label, (cutoff, interval) in fewer.items():
        paths[label] = ours(replace(exact, guidance_cutoff=cutoff, deep_cache_interval=interval))
    warm = {}
    for label, run in paths.items():
        warm[label] = timed(run)
        print(f"warm-up {label}: {warm[label][0]:.1f} s", flush=True)
    times = {label: [] for label in paths}
    for repeat in range(args.repeats):
        for label, run in paths.items():
            seconds, _ = timed(run)
            times[label].append(seconds)
            print(f"repeat {repeat + 1}/{args.repeats} {label}: {seconds:.2f} s/image", flush=True)

    reference = warm["stock"][1].astype(np.float64)
    iterations = args.steps + (1 if args.scheduler == "pndm" else 0)  # PNDM with skip_prk_steps repeats one timestep
    full_gflop = unet_gflop(fast, args.side, 1, shallow=False)
    shallow_gflop = unet_gflop(fast, args.side, 1, shallow=True)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peak = {name: cpu_peak.measure(dtypes[name])["matmul"] for name in {"fp32", engine.dtype}}
    results = {}
    for label in paths:
        if label in fewer:
            full_rows, shallow_rows = evaluations(iterations, *fewer[label], True)
        else:
            full_rows, shallow_rows = 2 * iterations, 0
        gflop = full_rows * full_gflop + shallow_rows * shallow_gflop
        median = statistics.median(times[label])
        mse = float(np.mean((warm[label][1].astype(np.float64) - reference) ** 2))
        dtype = "fp32" if label == "stock" else engine.dtype
        results[label] = {
            "seconds_per_image": median,
            "runs": times[label],
            "speedup_vs_stock": None,
            "psnr_vs_stock": math.inf if mse == 0 else 10 * math.log10(255**2 / mse),
            "unet_rows": {"full": full_rows, "shallow": shallow_rows},
            "unet_gflop_per_image": gflop,
            "achieved_gflops": gflop / median,
            "fraction_of_matmul_peak": gflop / median / peak[dtype],
            "dtype": dtype,
        }
    for label in paths:
        results[label]["speedup_vs_stock"] = results["stock"]["seconds_per_image"] / results[label]["seconds_per_image"]

    report = {
        "command": shlex.join(["python", "-m", "benchmarks.bench_per_image", *argv]),
        "machine": machine_info(),
        "engine": engine.as_dict(),
        "settings": {"side": args.side, "steps": args.steps, "scheduler": args.scheduler, "guidance": GUIDANCE_SCALE,
                     "fewer": args.fewer, "repeats": args.repeats},
        "compile_seconds": compile_seconds,
        "compile_graphs": compile_times,
        "unet_gflop": {"full_row": full_gflop, "shallow_row": shallow_gflop},
        "matmul_peak_gflops": peak,
        "paths": results,
    }
    print(f"\n{args.side}², {args.steps} steps {args.scheduler}, guidance {GUIDANCE_SCALE}; CPU flags "
          f"{' '.join(report['machine']['cpu_flags'])}; engine {engine.dtype} {engine.backend}")
    print("| path | s/image (median) | × stock | PSNR vs stock | UNet rows full + shallow | GFLOP/s | of peak |")
    print("|---|---|---|---|---|---|---|")
    for label, r in results.items():
        print(f"| {label} | {r['seconds_per_image']:.2f} | {r['speedup_vs_stock']:.2f}× | "
              f"{r['psnr_vs_stock']:.1f} dB | "
              f"{r['unet_rows']['full']} + {r['unet_rows']['shallow']} | {r['achieved_gflops']:.0f} | "
              f"{r['fraction_of_matmul_peak']:.0%} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the tiled VAE and the hires fix cost: tiled against whole-image decode (time, peak memory), and the hires pass.

What is measured
    1. decode: one image's latents decoded at --side² by `generator.pipeline.decode_latents`, whole
       (`tile_size=0`) and tiled (`tile_size=--tile`), fp32, CPU, with the model's AutoencoderKL only.
       Every decode runs in a FRESH PROCESS (this module with a hidden flag), so one variant's freed memory
       cannot hide the other's peak. The child loads the VAE, reads every weight (so none is paged in during the
       decode), resets its peak RSS (`/proc/self/clear_refs` 5, so loading does not count), reads VmRSS, decodes
       once (timed; no warm-up, whose cached memory would hide part of the peak: the first call's set-up is in
       the time), and reads VmHWM. It reports
       * seconds: wall time of the `decode_latents` call (latents in, uint8 array out);
       * rss_before, peak: VmRSS just before the decode and VmHWM after it; peak − before is the memory the
         decode itself needed (activations, the tiles' output buffers), the figure a worker's memory is sized by.
       Rounds run whole, tiled, whole, tiled, ... (--repeats rounds); the table shows medians. The latents are
       the same in every child (randn, fixed seed); the first round's two images are compared pixel by pixel
       (max and mean absolute difference of 0..255 values). The weights are RANDOM, so the difference shows
       that tiles are blended, not how visible seams would be on a trained VAE.
       Tiles: `tile` pixels a side with a quarter overlapping each neighbour; the last tile of a row or column
       ends at the border. At 1024² with 512-pixel tiles that is 3 × 3 = 9 tiles, 2.25 × the whole image's
       pixels decoded: the table's `work` column.
    2. hires: txt2img of one image at --hires-side², first pass only, and the same request with the hires fix
       (`hires_scale` --hires-scale, `hires_steps` = steps, `hires_strength` --strength) with the latent and
       the lanczos upscaler, on the whole model (`generate`, fp32, CPU, guidance 7.5, same prompt and seed).
       One untimed warm-up (lanczos hires at 2 steps: every UNet, decoder and encoder shape the timed calls use),
       then --repeats rounds interleaved first, latent, lanczos, ... Each call is timed whole (text encoding,
       both passes, decode, PNG). second pass = median(with hires) − median(first pass only), i.e. what
       switching the hires fix on adds (for the latent upscaler that includes decoding the larger image instead
       of the small one; for lanczos also decoding the first pass and encoding the upscaled image);
       the ratio is second pass / median(first pass only).

Model sizes
    * sd15 (default): the SD 1.5 architecture with random weights from `benchmarks.bench_engine` (built once
      into var/bench-models/, 4.0 GB, about a minute; the same folder bench_engine uses).
    * tiny: `generator.tiny.make_tiny_model` (VAE factor 2), for the smoke test; runs in seconds.

Run time (sd15, defaults, 2 cores). Estimated from FLOP counts (torch.utils.flop_counter): decoding 1024² is
    10.5 TFLOP, one 512² tile 2.5 TFLOP (× 9 tiles = 22.6), the hires rounds (128² → 256², 4 + 2 Euler steps, three
    calls) 4.4 TFLOP; at the 137 GFLOP/s fp32 the SD 1.5 UNet ran at on the 2-core AVX-512 VM (BENCHMARKS.md) and
    at the 48 GFLOP/s per thread the SD 1.5 VAE decoded 256² at on an AVX2-only 2-core VM (one thread, a busy
    machine), plus about 10 s to start each decode process:
    * decode, 3 rounds: about 13 min (AVX-512) / 18 min (AVX2): one round is 75 s + 165 s (AVX-512);
    * hires, warm-up and 3 rounds: about 2.5 min / 3.5 min;
    so about 15 min / 21 min in all, plus about a minute the first time, to build the model folder. The decode
    half is what costs: `--repeats 1` takes about 6 min / 9 min (the peaks should not vary between rounds), and
    `--part decode` or `--part hires` runs one half. A tiny run (`--size tiny --side 64 --tile 32 --repeats 1`)
    took 45-55 s on a busy 2-core machine, most of it importing torch and diffusers in three processes.
    The first pass is 128² so that the hires half stays short; by FLOPs the ratio barely depends on the size
    (second pass / first pass 2.3 at 128² → 256², 2.5 at 256² → 512²; `--hires-side 256` takes about 4 × as long).

Usage
    python -m benchmarks.image_modes [--size sd15|tiny] [--side 1024] [--tile 512] [--repeats 3] [--json PATH]
        [--part both|decode|hires] [--hires-side 128] [--hires-scale 2] [--steps 4] [--strength 0.5]
        [--scheduler euler]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from benchmarks.bench_engine import (  # sets HF_HUB_OFFLINE before the HF libraries import
    CPU_FLAGS,
    DEFAULT_CACHE_DIR,
    GUIDANCE_SCALE,
    PROMPT,
    SEED,
    load_average,
    machine_info,
    model_folder,
)
from generator import SCHEDULERS, GenerationRequest, generate, load_model
from generator.loading import LoadedModel
from generator.pipeline import MIN_TILE_LATENTS, _tile_starts, decode_latents

CHILD_FLAG = "--decode-child"  # hidden: one decode in this fresh process, its figures as JSON on the last line
HIRES_SIDES = {"sd15": 128, "tiny": 32}  # the first pass's side, pixels
LATENT_SEED = 7
MIB = 1024 * 1024


# ---- 1. decode, one variant per fresh process ------------------------------------------------


def proc_status_kib(field: str) -> int:
    """A `/proc/self/status` figure in KiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Set this process's VmHWM back to its VmRSS (Linux ≥ 4.0); False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def vae_factor(folder: Path) -> int:
    config = json.loads((folder / "vae" / "config.json").read_text())
    return 2 ** (len(config["block_out_channels"]) - 1)


def decode_child(spec: dict) -> dict:
    """Runs in the fresh process: load the VAE, decode once at spec's side and tile, measure time and peak RSS."""
    folder = Path(spec["folder"])
    vae = AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True, torch_dtype=torch.float32)
    vae.eval().requires_grad_(False)
    # Read every weight once: loaded weights may still be pages of the mapped file, which the first decode would
    # bring in and count as its own memory (about the decoder's size, 190 MiB for SD 1.5's).
    with torch.inference_mode():
        for tensor in vae.state_dict().values():
            tensor.sum()
    # decode_latents reads only the VAE, the dtype and the decoder; the other parts are not loaded.
    model = LoadedModel(
        name=folder.name, path=folder, content_hash="", tokenizer=None, text_encoder=None, unet=None, vae=vae,
        scheduler_config={}, device=torch.device("cpu"), dtype=torch.float32, defaults=None,
    )
    factor = model.vae_scale_factor
    side = spec["side"] // factor
    generator = torch.Generator("cpu").manual_seed(LATENT_SEED)
    latents = torch.randn((1, vae.config.latent_channels, side, side), generator=generator)
    # No warm-up decode: the memory it left cached in the allocator would not show in the peak above it (a warm-up
    # the size of a tile hid the tiled decode's memory). The first call's set-up is in the time; next to a decode
    # of a megapixel it is small.
    with torch.inference_mode():
        gc.collect()
        peak_reset = reset_peak_rss()
        rss_before = proc_status_kib("VmRSS")
        start, cpu_start = time.perf_counter(), time.process_time()
        image = decode_latents(model, latents, tile_size=spec["tile"])
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        peak = proc_status_kib("VmHWM")
    if spec.get("save"):
        np.save(spec["save"], image[0])
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "rss_before_mib": rss_before / 1024,
        "peak_rss_mib": peak / 1024,
        "decode_mib": (peak - rss_before) / 1024,
        "peak_reset": peak_reset,  # False: the peak may include loading the weights (an upper bound)
        "torch_threads": torch.get_num_threads(),
    }


def run_child(spec: dict) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.image_modes", CHILD_FLAG, json.dumps(spec)],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if result.returncode != 0:
        output = result.stdout[-2000:] + result.stderr[-3000:]
        raise RuntimeError(f"decode child failed ({result.returncode}):\n{output}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def tile_count(side_latents: int, tile_latents: int) -> int:
    """How many tiles decode_latents decodes for a square image (its own _tile_starts, overlap a quarter)."""
    return len(_tile_starts(side_latents, tile_latents, max(1, tile_latents // 4))) ** 2


def benchmark_decode(folder: Path, side: int, tile: int, repeats: int) -> dict:
    factor = vae_factor(folder)
    variants = {"whole": 0, "tiled": tile}
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        for repeat in range(repeats):
            for name, tile_size in variants.items():
                save = str(Path(tmp) / f"{name}.npy") if repeat == 0 else None
                spec = {"folder": str(folder), "side": side, "tile": tile_size, "save": save}
                run = run_child(spec)
                runs[name].append(run)
                print(
                    f"  decode {side}² {name:5s} round {repeat + 1}/{repeats}: {run['seconds']:.3g} s, "
                    f"RSS {run['rss_before_mib']:.0f} → peak {run['peak_rss_mib']:.0f} MiB "
                    f"(+{run['decode_mib']:.0f}), cpu/wall {run['cpu_seconds'] / run['seconds']:.2f}",
                    flush=True,
                )
        whole = np.load(Path(tmp) / "whole.npy").astype(np.int16)
        tiled = np.load(Path(tmp) / "tiled.npy").astype(np.int16)
    difference = np.abs(whole - tiled)
    tiles = tile_count(side // factor, tile // factor)
    return {
        "side": side,
        "latent_side": side // factor,
        "tile": tile,
        "overlap": max(1, tile // factor // 4) * factor,
        "tiles": tiles,
        "work": tiles * tile * tile / (side * side),  # pixels decoded / the image's pixels
        "variants": {
            name: {
                "median_seconds": statistics.median(r["seconds"] for r in rs),
                "median_rss_before_mib": statistics.median(r["rss_before_mib"] for r in rs),
                "median_peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in rs),
                "median_decode_mib": statistics.median(r["decode_mib"] for r in rs),
                "max_decode_mib": max(r["decode_mib"] for r in rs),
                "runs": rs,
            }
            for name, rs in runs.items()
        },
        "max_pixel_difference": int(difference.max()),
        "mean_pixel_difference": float(difference.mean()),
        "random_weights": True,
    }


# ---- 2. the hires fix ----------------------------------------------------------------------------


def hires_variants(args: argparse.Namespace, steps: int | None = None) -> dict[str, dict]:
    hires = {"hires_scale": args.hires_scale, "hires_steps": steps or args.steps, "hires_strength": args.strength}
    return {
        "first pass only": {},
        "hires, latent": {**hires, "hires_upscaler": "latent"},
        "hires, lanczos": {**hires, "hires_upscaler": "lanczos"},
    }


def timed_generate(model, side: int, steps: int, scheduler: str, fields: dict) -> dict:
    request = GenerationRequest(
        prompt=PROMPT, width=side, height=side, steps=steps, guidance_scale=GUIDANCE_SCALE,
        scheduler=scheduler, seed=SEED, **fields,
    )
    iterations = []
    gc.collect()  # outside the timed call
    start, cpu_start = time.perf_counter(), time.process_time()
    result = generate(model, [request], callback=lambda state: iterations.append(state.step))[0]
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    image = result.images[0].image
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "iterations": len(iterations), "output": image.size}


def benchmark_hires(folder: Path, args: argparse.Namespace) -> dict:
    model = load_model(folder, device="cpu", dtype="fp32")
    side = args.hires_side or HIRES_SIDES[args.size]
    warm = hires_variants(args, steps=2)["hires, lanczos"]
    timed_generate(model, side, 2, args.scheduler, warm)
    variants = hires_variants(args)
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for repeat in range(args.repeats):
        for name, fields in variants.items():
            run = timed_generate(model, side, args.steps, args.scheduler, fields)
            runs[name].append(run)
            print(
                f"  {name:15s} round {repeat + 1}/{args.repeats}: {run['seconds']:.3g} s "
                f"({run['iterations']} iterations, {run['output'][0]}²), "
                f"cpu/wall {run['cpu_seconds'] / run['seconds']:.2f}",
                flush=True,
            )
    first_iterations = runs["first pass only"][0]["iterations"]
    first = statistics.median(r["seconds"] for r in runs["first pass only"])
    out = {}
    for name, rs in runs.items():
        median = statistics.median(r["seconds"] for r in rs)
        out[name] = {
            "median_seconds": median,
            "output_side": rs[0]["output"][0],
            "iterations": rs[0]["iterations"],
            "second_pass_iterations": rs[0]["iterations"] - first_iterations,
            "second_pass_seconds": median - first,
            "second_over_first": (median - first) / first,
            "runs": rs,
        }
    del model
    gc.collect()
    return {
        "first_side": side,
        "hires_scale": args.hires_scale,
        "steps": args.steps,
        "hires_steps": args.steps,
        "strength": args.strength,
        "scheduler": args.scheduler,
        "guidance_scale": GUIDANCE_SCALE,
        "variants": out,
    }


# ---- report --------------------------------------------------------------------------------------


def run_table(command: str, machine: dict) -> str:
    flags = " ".join(machine["cpu_flags"]) or "none"
    missing = [f for f in CPU_FLAGS if f not in machine["cpu_flags"]]
    rows = [
        ("command", f"`{command}`"),
        ("machine", f"{machine['cpu']}, {machine['cpu_count']} cores, torch threads {machine['torch_threads']}"),
        ("CPU flags", flags + (f" (not: {' '.join(missing)})" if missing else "")),
        ("versions", f"torch {machine['torch']}, diffusers {machine['diffusers']}, python {machine['python']}"),
        ("load average", f"{machine['load_average_at_start']} at start, {machine['load_average_at_end']} at end"),
    ]
    return "\n".join(["| run | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def decode_table(d: dict, repeats: int) -> str:
    lines = [
        f"| VAE decode, 1 image {d['side']}², fp32 | tiles | work | s (median of {repeats}) "
        "| RSS before decode | peak RSS | peak − before |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in d["variants"].items():
        label = "whole image" if name == "whole" else f"tiled {d['tile']} px (overlap {d['overlap']} px)"
        tiles, work = (1, 1.0) if name == "whole" else (d["tiles"], d["work"])
        lines.append(
            f"| {label} | {tiles} | {work:.2f}× | {v['median_seconds']:.3g} | {v['median_rss_before_mib']:.0f} MiB "
            f"| {v['median_peak_rss_mib']:.0f} MiB | {v['median_decode_mib']:.0f} MiB |"
        )
    whole, tiled = d["variants"]["whole"], d["variants"]["tiled"]
    lines.append("")
    lines.append(
        f"tiled / whole: time {tiled['median_seconds'] / whole['median_seconds']:.2f}×, decode memory "
        f"{tiled['median_decode_mib'] / whole['median_decode_mib']:.2f}×; tiled vs whole pixels: max difference "
        f"{d['max_pixel_difference']}, mean {d['mean_pixel_difference']:.2f} (of 255; RANDOM weights)"
    )
    if not all(r["peak_reset"] for v in d["variants"].values() for r in v["runs"]):
        lines.append("note: /proc/self/clear_refs was refused, so the peaks include loading the weights")
    return "\n".join(lines)


def hires_table(h: dict, repeats: int) -> str:
    side = h["first_side"]
    lines = [
        f"| {side}² txt2img, {h['steps']} steps {h['scheduler']}, hires ×{h['hires_scale']:g} strength "
        f"{h['strength']:g} | output | UNet iterations | s/image (median of {repeats}) | second pass s "
        "| second pass / first pass |",
        "|---|---|---|---|---|---|",
    ]
    first = h["variants"]["first pass only"]["iterations"]
    for name, v in h["variants"].items():
        hires = name != "first pass only"
        iterations = f"{first} + {v['second_pass_iterations']}" if hires else str(first)
        lines.append(
            f"| {name} | {v['output_side']}² | {iterations} | {v['median_seconds']:.3g} "
            f"| {v['second_pass_seconds']:.3g} | {v['second_over_first']:.2f}× |"
            if hires
            else f"| {name} | {v['output_side']}² | {iterations} | {v['median_seconds']:.3g} | | |"
        )
    return "\n".join(lines)


# ---- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["sd15", "tiny"], default="sd15")
    parser.add_argument("--part", choices=["both", "decode", "hires"], default="both")
    parser.add_argument("--side", type=int, default=1024, help="decode: the image's side, pixels")
    parser.add_argument("--tile", type=int, default=512, help="decode: the tile's side, pixels")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of each part")
    parser.add_argument("--hires-side", type=int, help="hires: the first pass's side (sd15 128, tiny 32)")
    parser.add_argument("--hires-scale", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=4, help="hires: steps of the first pass and hires_steps")
    parser.add_argument("--strength", type=float, default=0.5, help="hires: hires_strength")
    parser.add_argument("--scheduler", choices=list(SCHEDULERS), default="euler")
    parser.add_argument("--json", type=Path, help="write raw results here")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="where the SD 1.5-size model is kept")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.steps < 2:
        parser.error("--steps must be at least 2")
    if not 0 < args.tile < args.side:
        parser.error("--tile must be smaller than --side (else the decode is not tiled)")
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [CHILD_FLAG]:
        print(json.dumps(decode_child(json.loads(argv[1]))), flush=True)
        return
    args = parse_args(argv)
    command = " ".join(["python -m benchmarks.image_modes", *argv])
    machine = machine_info()
    results: dict = {"command": command, "machine": machine, "size": args.size, "repeats": args.repeats}

    with model_folder(args.size, args.cache_dir) as folder:
        factor = vae_factor(folder)
        if args.part in ("both", "decode"):
            if args.side % factor or args.tile % factor or args.tile < MIN_TILE_LATENTS * factor:
                raise SystemExit(
                    f"--side and --tile must be multiples of {factor}, --tile at least {MIN_TILE_LATENTS * factor}"
                )
            print(f"decode: {args.size} VAE, {args.side}², whole and tiled {args.tile} px, a process each", flush=True)
            results["decode"] = benchmark_decode(folder, args.side, args.tile, args.repeats)
        if args.part in ("both", "hires"):
            print(f"hires: {args.size}, first pass {args.hires_side or HIRES_SIDES[args.size]}²", flush=True)
            results["hires"] = benchmark_hires(folder, args)

    machine["load_average_at_end"] = load_average()
    print()
    print(run_table(results["command"], machine))
    if "decode" in results:
        print()
        print(decode_table(results["decode"], args.repeats))
    if "hires" in results:
        print()
        print(hires_table(results["hires"], args.repeats))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nraw results: {args.json}")


if __name__ == "__main__":
    main()

"""What fewer UNet evaluations cost in quality, on the built-in model: each setting against the exact path.

    python -m benchmarks.evals_quality --prompts 32 --images-per-prompt 2 \
        --configs exact cutoff=0.5 interval=3 cutoff=0.5,interval=3 scheduler=unipc,steps=12 --out var/evals

Every configuration generates the evaluation's three prompt sets (generator.evaluation.image_sets: the same prompts,
the same image seeds) with the model's defaults (or `--scheduler`, `--steps`) changed only by its `key=value`
pairs: `cutoff` (guidance_cutoff), `interval` (deep_cache_interval), `scheduler`, `steps`; `exact` changes
nothing. For each it reports

- attribute accuracy, over all images, per prompt set and per attribute (generator.evaluation.report);
- FID on the model's CLIP image features against the exact path's images (same prompts and seeds), and against real
  set A; the noise floor beside them is the exact path with other image seeds against the exact path;
- the mean PSNR of each image against the exact path's image of the same seed;
- UNet evaluations per image (a guided step counts 2, a shallow DeepCache step counts 1 but costs less), and seconds
  per image of generation alone (batched, this machine: a ratio to the exact row is what carries).

It writes `evals.json` and `evals.md` to `--out`.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_engine import cpu_flags
from generator.evaluate import load_for_evaluation
from generator.evaluation.features import ClipFeatures
from generator.evaluation.image_sets import (
    PROMPT_SEED,
    PROMPT_SETS,
    generate_images,
    generate_in_batches,
    real_sets,
    resolve_sampling,
)
from generator.evaluation.metrics import frechet_distance
from generator.evaluation.report import attribute_accuracy

KEYS = {"cutoff": ("guidance_cutoff", float), "interval": ("deep_cache_interval", int), "scheduler": ("scheduler", str),
        "steps": ("steps", int)}
FLOOR_SEED_OFFSET = 500  # the noise floor's images: seeds 1000 i + 500 + j, never an exact image's seed


def parse_config(text: str) -> dict:
    if text == "exact":
        return {}
    config = {}
    for pair in text.split(","):
        key, _, value = pair.partition("=")
        if key not in KEYS or not value:
            raise argparse.ArgumentTypeError(f"a config is 'exact' or key=value pairs with keys {list(KEYS)}: {text!r}")
        name, kind = KEYS[key]
        config[name] = kind(value)
    return config


def evaluations(steps: int, cutoff: float, interval: int, guided: bool) -> tuple[int, int]:
    """(full UNet rows, shallow UNet rows) per image for `steps` steps, as pipeline.run_pass runs them."""
    guided_steps = math.ceil(cutoff * steps) if guided else 0
    full = shallow = 0
    for i in range(steps):
        rows = 2 if i < guided_steps else 1
        if i % interval == 0:
            full += rows
        else:
            shallow += rows
    return full, shallow


def generate_set(model, prompt_sets, sampling, fields: dict, images_per_prompt: int, seed_offset: int, batch: int):
    scheduling = {k: v for k, v in fields.items() if k in ("scheduler", "steps")}
    rest = {k: v for k, v in fields.items() if k not in scheduling}
    return generate_images(model, prompt_sets, images_per_prompt, replace(sampling, **scheduling), batch=batch,
                           seed_offset=seed_offset, fields=rest)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2, axis=(1, 2, 3))
    return float(np.mean(10 * np.log10(255**2 / np.maximum(mse, 1e-10))))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.evals_quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/shapes64"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--configs", type=parse_config, nargs="+", default=[{}])
    parser.add_argument("--prompts", type=int, default=32, help="prompts per prompt set")
    parser.add_argument("--images-per-prompt", type=int, default=2)
    parser.add_argument("--prompt-seed", type=int, default=PROMPT_SEED)
    parser.add_argument("--scheduler", help="the exact path's scheduler (default: the model's)")
    parser.add_argument("--steps", type=int, help="the exact path's steps (default: the model's)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args(argv)

    model, prompt_sets = load_for_evaluation(args)
    clip, note = ClipFeatures.try_for_model(model, skipped="FID")
    if clip is None:
        parser.error(note)
    sampling = resolve_sampling(model, scheduler=args.scheduler, steps=args.steps)
    count = len(PROMPT_SETS) * args.prompts * args.images_per_prompt
    real_a = real_sets(count, args.prompts)[0]
    real_features = clip.images(real_a.images)

    generate_in_batches(model, [sampling.request("a red circle", seed=0)])  # warm-up: the first call is slower
    exact, exact_seconds = generate_set(model, prompt_sets, sampling, {}, args.images_per_prompt, 0, args.batch)
    exact_features = clip.images(exact.images)
    other, _ = generate_set(model, prompt_sets, sampling, {}, args.images_per_prompt, FLOOR_SEED_OFFSET, args.batch)
    floor = frechet_distance(clip.images(other.images), exact_features)
    print(f"noise floor (exact, other seeds, vs exact): FID {floor:.4g}", flush=True)

    rows = []
    for fields in args.configs:
        if fields:
            images, seconds = generate_set(model, prompt_sets, sampling, fields, args.images_per_prompt, 0, args.batch)
        else:
            images, seconds = exact, exact_seconds
        features = clip.images(images.images)
        reports = attribute_accuracy(images)
        resolved = replace(sampling, **{k: v for k, v in fields.items() if k in ("scheduler", "steps")})
        full, shallow = evaluations(
            resolved.steps, fields.get("guidance_cutoff", 1.0), fields.get("deep_cache_interval", 1),
            resolved.guidance_scale > 1,
        )
        row = {
            "config": fields or "exact",
            "scheduler": resolved.scheduler,
            "steps": resolved.steps,
            "unet_rows_full": full,
            "unet_rows_shallow": shallow,
            "seconds_per_image": seconds / len(images),
            "accuracy": {name: report.overall for name, report in reports.items()},
            "per_attribute": reports["all"].per_attribute,
            "fid_vs_exact": frechet_distance(features, exact_features),
            "fid_vs_real": frechet_distance(features, real_features),
            "psnr_vs_exact": psnr(images.images, exact.images) if fields else None,
        }
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("config", "accuracy", "fid_vs_exact", "psnr_vs_exact",
                                              "seconds_per_image")}), flush=True)

    report = {
        "command": shlex.join(["python", "-m", "benchmarks.evals_quality", *argv]),
        "model": {"path": str(model.path), "hash": model.content_hash},
        "machine": {"cpu_flags": [f for f in cpu_flags() if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")],
                    "threads": torch.get_num_threads()},
        "settings": {"prompts": args.prompts, "images_per_prompt": args.images_per_prompt, "images": count,
                     "prompt_seed": args.prompt_seed, "dtype": args.dtype, "defaults": vars(sampling)},
        "fid_noise_floor": floor,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "evals.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    (args.out / "evals.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    exact_seconds = next((r["seconds_per_image"] for r in report["rows"] if r["config"] == "exact"), None)
    lines = [
        f"`{report['command']}` — {report['settings']['images']} images a row; FID on CLIP features; noise floor "
        f"(exact path, other seeds) {report['fid_noise_floor']:.4g}.",
        "",
        "| setting | scheduler, steps | UNet rows full + shallow | accuracy | single | held_out | relation | "
        "FID vs exact | FID vs real | PSNR vs exact | time vs exact |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        name = r["config"] if isinstance(r["config"], str) else ", ".join(f"{k}={v}" for k, v in r["config"].items())
        ratio = f"{r['seconds_per_image'] / exact_seconds:.2f}" if exact_seconds else "n/a"
        psnr_text = f"{r['psnr_vs_exact']:.1f} dB" if r["psnr_vs_exact"] is not None else "—"
        accuracy = r["accuracy"]
        lines.append(
            f"| {name} | {r['scheduler']}, {r['steps']} | {r['unet_rows_full']} + {r['unet_rows_shallow']} | "
            f"{accuracy['all']:.3f} | {accuracy['single']:.3f} | {accuracy['held_out']:.3f} | "
            f"{accuracy['relation']:.3f} | {r['fid_vs_exact']:.4g} | {r['fid_vs_real']:.4g} | {psnr_text} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

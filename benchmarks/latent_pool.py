"""The UNet stage's latent pool (`latent_pool: N`): what it saves per step, and whether training on it memorises.

Usage:
    python -m benchmarks.latent_pool speed [--model models/shapes64] [--repeats 7] [--precision auto] [KEY=VALUE ...]
    python -m benchmarks.latent_pool loss RUN [RUN ...] [--scenes 1024]

`speed` builds the real stage (`configs/unet_again.yaml` on `--model`'s UNet, text encoder and VAE, batch 64) and
times `train_step` (KEY=VALUE pairs override the config: `init_from= attention_levels=[1]` times a new UNet of
experiment 27's shape) with every batch drawn and VAE-encoded (the stage without a pool) against the same step reading
a pool, taking turns so that both see the same machine load (medians of `--repeats`); then the pool's cost, the
seconds per scene its encoding takes at the start.

`loss` reads training runs (their `final/` folders) and reports each one's denoising loss (the training objective,
v-prediction MSE on full captions) on `--scenes` training-split scenes it never saw (drawn fresh, seed 12345) and,
for a run with a pool, on its own pool's first `--scenes` entries; every run gets the same images, timesteps and
noise. A model that memorised its pool does better on the pool than on new scenes; a run without a pool, scored
on another run's pool, shows what that gap is by chance.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from generator.data.shapes64 import full_caption, render
from generator.text import tokenize
from generator.train.config import load_config
from generator.train.data import to_tensor, training_scenes
from generator.train.loop import resolve_precision
from generator.train.unet import pool_scenes

ROOT = Path(__file__).resolve().parents[1]


def speed(args) -> None:
    from accelerate import Accelerator

    from generator.train.stage import make_stage

    precision = resolve_precision(args.precision)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}, "
          f"mixed precision {precision}")
    with tempfile.TemporaryDirectory() as out:
        base = {"clip_dir": args.model, "vae_dir": args.model, "init_from": args.model, "output_dir": out,
                "mixed_precision": precision, "sample_prompts": 1, "latent_pool": 0}
        config = load_config(ROOT / "configs/unet_again.yaml", [f"{k}={v}" for k, v in base.items()] + args.overrides)
        stage = make_stage(config, Accelerator(mixed_precision=precision))
        start = time.perf_counter()
        pool = stage.encode_pool(args.pool_scenes)
        per_scene = (time.perf_counter() - start) / args.pool_scenes
        step = 0
        times = {"fresh batch, VAE-encoded": [], "latent pool": []}
        for i in range(args.repeats + 1):  # the first round warms up
            for name, source in zip(times, (None, pool), strict=True):
                stage.pool = source
                begin = time.perf_counter()
                stage.train_step(step, np.random.default_rng([0, step]))
                if i:
                    times[name].append(time.perf_counter() - begin)
                step += 1
    fresh, pooled = (statistics.median(t) for t in times.values())
    print(f"\n| train_step (batch {config.batch_size}) | seconds | images/s |\n|---|---|---|")
    for name, median in zip(times, (fresh, pooled), strict=True):
        print(f"| {name} | {median:.3f} | {config.batch_size / median:.1f} |")
    print(f"speed-up: {fresh / pooled:.2f} ×; encoding the pool: {per_scene * 1000:.1f} ms a scene "
          f"({per_scene * config.batch_size / fresh:.0%} of a fresh step per batch of scenes)")


@torch.no_grad()
def denoising_loss(model, scenes, seed: int = 0, chunk: int = 128) -> float:
    """Mean v-prediction MSE over `scenes` with full captions; images, timesteps and noise fixed by `seed`."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(model.scheduler_config)
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for i in range(0, len(scenes), chunk):
        part = scenes[i : i + chunk]
        images = to_tensor(np.stack([np.asarray(render(scene)) for scene in part]))
        posterior = model.vae.encode(images).latent_dist
        latents = posterior.mean * model.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(part),), generator=generator)
        hidden = model.text_encoder(tokenize(model.tokenizer, [full_caption(scene) for scene in part]))[0]
        noisy = scheduler.add_noise(latents, noise, timesteps)
        target = scheduler.get_velocity(latents, noise, timesteps)
        prediction = model.unet(noisy, timesteps, hidden).sample
        total += torch.nn.functional.mse_loss(prediction, target, reduction="sum").item() / latents[0].numel()
    return total / len(scenes)


def loss(args) -> None:
    from generator.loading import load_model

    fresh = training_scenes(np.random.default_rng(12345), args.scenes, data_seed=0)
    print(f"| run | latent pool | loss on {args.scenes} new scenes | loss on the pool's first {args.scenes} | "
          f"pool − new |\n|---|---|---|---|---|")
    configs = {run: load_config(Path(run) / "final" / "config.yaml") for run in args.runs}
    pools = {run: pool_scenes(config, config.latent_pool)[: args.scenes]
             for run, config in configs.items() if config.latent_pool}
    for run, config in configs.items():
        model = load_model(Path(run) / "final", device="cpu", dtype="fp32")
        new = denoising_loss(model, fresh)
        # A run without a pool is scored on the first other run's pool: scenes it never saw either.
        pool = pools.get(run) or next(iter(pools.values()), None)
        if pool is None:
            print(f"| {run} | {config.latent_pool} | {new:.5f} | – | – |")
            continue
        old = denoising_loss(model, pool)
        print(f"| {run} | {config.latent_pool} | {new:.5f} | {old:.5f} | {old - new:+.5f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    timing = commands.add_parser("speed")
    timing.add_argument("--model", default="models/shapes64")
    timing.add_argument("--repeats", type=int, default=7)
    timing.add_argument("--precision", default="auto")
    timing.add_argument("--pool-scenes", type=int, default=512, help="scenes encoded into the pool that is timed")
    timing.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    scoring = commands.add_parser("loss")
    scoring.add_argument("runs", nargs="+")
    scoring.add_argument("--scenes", type=int, default=1024)
    args = parser.parse_args()
    speed(args) if args.command == "speed" else loss(args)


if __name__ == "__main__":
    main()

"""The UNet stage's whole training step with SDPA against plain-matmul attention, and without 16 x 16 attention.

Usage: python -m experiments.unet_attention [--model models/shapes64] [--repeats 5] [--profile]

Builds the real stage three times (`configs/unet.yaml`: a new UNet of 64/128/192 channels, batch 64, bf16 autocast
where `mixed_precision: auto` picks it, the model's frozen text encoder and VAE) and times its `train_step`: drawing
the batch, VAE encoding, text encoder, UNet forward and backward, AdamW and EMA. The three take turns, so that all
see the same machine load; each figure is the median of `--repeats` steps after one warm-up, all in one process.

* "SDPA, attention at 16 x 16 and 8 x 8": the stage before 2026-12-06 (diffusers' default `AttnProcessor2_0`);
* "plain matmuls, attention at 16 x 16 and 8 x 8": the stage now (`AttnProcessor`), the same UNet;
* "plain matmuls, attention at 8 x 8 only": `attention_levels: [1]`, a UNet whose full-resolution level has
  convolutions only (docs/experiments, experiment 26).

`--profile` then prints where the first variant's steps go (`torch.profiler`, 3 steps, the 10 costliest operators).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

VARIANTS = {
    "SDPA, attention at 16 x 16 and 8 x 8": ({}, True),
    "plain matmuls, attention at 16 x 16 and 8 x 8": ({}, False),
    "plain matmuls, attention at 8 x 8 only": ({"attention_levels": [1]}, False),
}


def main() -> None:
    from accelerate import Accelerator
    from diffusers.models.attention_processor import AttnProcessor2_0

    from generator.train.config import load_config
    from generator.train.loop import resolve_precision
    from generator.train.stage import make_stage

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/shapes64")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    precision = resolve_precision("auto")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}, "
          f"mixed precision {precision}")

    with tempfile.TemporaryDirectory() as out:
        accelerator = Accelerator(mixed_precision=precision)
        stages = {}
        for name, (extra, sdpa) in VARIANTS.items():
            torch.manual_seed(0)
            config = load_config("configs/unet.yaml", {
                "clip_dir": args.model, "vae_dir": args.model, "output_dir": out, "sample_prompts": 1,
                "attention_levels": None, "latent_pool": 0, **extra,
            })
            stage = make_stage(config, accelerator)
            if sdpa:
                accelerator.unwrap_model(stage.unet).set_attn_processor(AttnProcessor2_0())
            stages[name] = stage

        times = {name: [] for name in stages}
        for repeat in range(args.repeats + 1):  # the first round is the warm-up
            for name, stage in stages.items():
                start = time.perf_counter()
                stage.train_step(repeat, np.random.default_rng([0, repeat]))
                if repeat:
                    times[name].append(time.perf_counter() - start)

        if args.profile:
            from torch.profiler import profile

            stage = next(iter(stages.values()))
            with profile() as profiler:
                for step in range(3):
                    stage.train_step(step, np.random.default_rng([1, step]))
            print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))

    baseline = statistics.median(next(iter(times.values())))
    print("\n| train_step (batch 64) | seconds | images/s | speed-up |\n|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {64 / median:.1f} | {baseline / median:.2f} × |")


if __name__ == "__main__":
    main()

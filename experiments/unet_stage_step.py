"""Where a UNet-stage training step goes, and what encoding the batch under bf16 autocast saves and costs.

Usage: python -m experiments.unet_stage_step [--model models/shapes64] [--repeats 5] [--images 512]

Builds the real stage (`configs/unet.yaml`, the model's UNet, text encoder and VAE, batch 64) under bf16 autocast
and times, as medians of `--repeats` calls after one warm-up, all in one process:

* drawing a batch (`training_batch`), the VAE encoding it in fp32 and under bf16 autocast, the frozen text encoder;
* the whole `train_step` as it is (the VAE under the stage's autocast) against the same step with the VAE in fp32
  (the stage before 2026-12-04), taking turns so that both see the same machine load.

Then the cost: the posterior means of `--images` validation images encoded both ways, their relative difference,
and the attribute evaluator's pass rate of each one's fp32 decode (a latent that lost something shows up there).
Needs a CPU where bf16 is fast (AVX-512 BF16 or AMX); elsewhere the stage trains in fp32 and nothing changes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from benchmarks.cpu_peak import seconds
from generator.evaluation.attributes import accuracy, check
from generator.text import tokenize
from generator.train.data import to_tensor, to_uint8, training_batch, validation_pairs


def fp32_latents(stage):
    """The stage's `latents` as it was before: the VAE outside autocast."""

    @torch.no_grad()
    def latents(images, generator):
        posterior = stage.vae.encode(images).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator)
        return (posterior.mean + posterior.std * noise) * stage.vae.config.scaling_factor

    return latents


def main() -> None:
    from accelerate import Accelerator

    from generator.train.config import load_config
    from generator.train.stage import make_stage

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/shapes64")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=512)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}")

    with tempfile.TemporaryDirectory() as out:
        config = load_config("configs/unet.yaml", {
            "clip_dir": args.model, "vae_dir": args.model, "init_from": args.model, "output_dir": out,
            "mixed_precision": "bf16", "sample_prompts": 1, "latent_pool": 0,
        })
        stage = make_stage(config, Accelerator(mixed_precision="bf16"))
        rng = np.random.default_rng(0)
        images, captions = training_batch(rng, config.batch_size, config.data_seed)
        generator = torch.Generator().manual_seed(0)
        as_before = fp32_latents(stage)
        tokens = tokenize(stage.tokenizer, captions)
        parts = {
            "draw the batch": lambda: training_batch(rng, config.batch_size, config.data_seed),
            "VAE encode, fp32": lambda: as_before(images, generator),
            "VAE encode, bf16 autocast": lambda: stage.latents(images, generator),
            "text encoder (frozen, fp32)": lambda: stage.text_encoder(tokens),
        }
        print(f"\n| part (batch {config.batch_size}) | seconds |\n|---|---|")
        with torch.no_grad():
            for name, fn in parts.items():
                print(f"| {name} | {seconds(fn, args.repeats):.3f} |", flush=True)

        step = 0

        def train_step():
            nonlocal step
            step += 1
            stage.train_step(step, np.random.default_rng([0, step]))

        autocast_encode = stage.latents
        times = {"VAE in fp32 (before)": [], "VAE under autocast (now)": []}
        train_step()  # warm-up
        for _ in range(args.repeats):
            for name, latents in zip(times, (as_before, autocast_encode), strict=True):
                stage.latents = latents
                start = time.perf_counter()
                train_step()
                times[name].append(time.perf_counter() - start)
        stage.latents = autocast_encode
        before, now = (statistics.median(t) for t in times.values())
        print("\n| train_step | seconds | images/s |\n|---|---|---|")
        for name, median in zip(times, (before, now), strict=True):
            print(f"| {name} | {median:.3f} | {config.batch_size / median:.1f} |")
        print(f"speed-up: {before / now:.2f} ×")

        real, prompts = validation_pairs(args.images)
        decoded, errors = {"fp32": [], "bf16 autocast": []}, []
        with torch.no_grad():
            for i in range(0, len(real), 64):
                batch = to_tensor(real[i : i + 64])
                mean32 = stage.vae.encode(batch).latent_dist.mean
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    mean16 = stage.vae.encode(batch).latent_dist.mean.float()
                errors.append(((mean16 - mean32).flatten(1).norm(dim=1) / mean32.flatten(1).norm(dim=1)).numpy())
                for name, mean in (("fp32", mean32), ("bf16 autocast", mean16)):
                    decoded[name].append(to_uint8(stage.vae.decode(mean).sample))
        errors = np.concatenate(errors)
        print(f"\nposterior mean, bf16 autocast against fp32: relative L2 difference median {np.median(errors):.4f}, "
              f"max {errors.max():.4f} over {len(errors)} validation images")
        print(f"| encoded in | decodes passing the attribute evaluator ({len(real)} validation images) |\n|---|---|")
        for name, batches in decoded.items():
            verdicts = [check(image, prompt) for image, prompt in zip(np.concatenate(batches), prompts, strict=True)]
            print(f"| {name} | {accuracy(verdicts).overall:.1%} |")


if __name__ == "__main__":
    main()

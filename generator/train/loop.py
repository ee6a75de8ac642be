"""The training loop every stage shares: Accelerate, a progress bar, sample grids, checkpoints and resume.

A stage (clip.py, vae.py, unet.py, tiny_vae.py; the `Stage` protocol in stage.py) owns its models and
optimizers and does one optimisation step in `train_step(step, rng)`; this loop decides the batches'
randomness, logs, samples and saves. The optimiser and schedule helpers are in optim.py.

Batches are drawn from `np.random.default_rng([seed, step, process])`: a run resumed from a
checkpoint sees exactly the batches an uninterrupted run would have seen, with no data-loader state
to save.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from generator.train.config import CommonConfig, config_yaml
from generator.train.stage import Stage, make_stage


def checkpoints(output_dir: Path) -> list[Path]:
    return sorted((output_dir / "checkpoints").glob("step-*"))


def save_checkpoint(accelerator, output_dir: Path, config: CommonConfig, step: int) -> Path:
    path = output_dir / "checkpoints" / f"step-{step:07d}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        (path / "config.yaml").write_text(config_yaml(config))
        (path / "step.json").write_text(json.dumps({"step": step}) + "\n")
        for old in checkpoints(output_dir)[: -config.keep_checkpoints]:
            shutil.rmtree(old)
    return path


def resolve_resume(output_dir: Path, resume: str) -> Path:
    if resume == "latest":
        found = checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(f"no checkpoint under {output_dir / 'checkpoints'} to resume from")
        return found[-1]
    path = Path(resume)
    if not (path / "step.json").is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint (no step.json)")
    return path


def fast_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether bf16 autocast speeds training up here: a CUDA GPU with bf16, or a CPU with AVX-512 BF16 or AMX.

    Elsewhere bf16 is emulated: on an AVX2 CPU a built-in-model UNet step ran 15 × slower under bf16 than in fp32
    (`python -m experiments.unet_train_step`)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = cpuinfo.read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(mixed_precision: str) -> str:
    """`auto` → bf16 where it is fast (`fast_bf16`), else no; the other values as they are."""
    if mixed_precision == "auto":
        return "bf16" if fast_bf16() else "no"
    if mixed_precision not in ("no", "bf16", "fp16"):
        raise ValueError(f"mixed_precision must be no, bf16, fp16 or auto, got {mixed_precision!r}")
    return mixed_precision


def train(config: CommonConfig, resume: str | None = None, progress: bool = True) -> Path:
    """Run a stage's training from its config; returns the folder with the final weights."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    if config.threads:
        torch.set_num_threads(config.threads)
    output_dir = Path(config.output_dir)
    precision = resolve_precision(config.mixed_precision)
    accelerator = Accelerator(project_dir=str(output_dir), mixed_precision=precision)
    if precision != config.mixed_precision:
        accelerator.print(f"mixed_precision {config.mixed_precision}: {precision} on this machine")
    set_seed(config.seed)
    stage = make_stage(config, accelerator)

    start = 0
    if resume:
        checkpoint = resolve_resume(output_dir, resume)
        accelerator.load_state(str(checkpoint))
        start = json.loads((checkpoint / "step.json").read_text())["step"]
        # The next step's learning rate from this run's schedule: a resumed run may have a new `steps`.
        stage.schedule.last_epoch = start - 1
        stage.schedule.step()
        accelerator.print(f"resumed from {checkpoint} at step {start}")
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(config_yaml(config))
    log_path = output_dir / "log.jsonl"

    bar = tqdm(total=config.steps, initial=start, disable=not (progress and accelerator.is_main_process),
               desc=config.stage, dynamic_ncols=True)
    images_per_step = config.batch_size * accelerator.num_processes
    smoothed, window_start, window_steps = None, time.perf_counter(), 0
    for step in range(start, config.steps):
        rng = np.random.default_rng([config.seed, step, accelerator.process_index])
        logs = stage.train_step(step, rng)
        window_steps += 1
        smoothed = logs["loss"] if smoothed is None else 0.9 * smoothed + 0.1 * logs["loss"]
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            elapsed = time.perf_counter() - window_start
            rate = images_per_step * window_steps / max(elapsed, 1e-9)
            window_start, window_steps = time.perf_counter(), 0
            bar.set_postfix(loss=f"{smoothed:.4f}", img_s=f"{rate:.0f}")
            if accelerator.is_main_process:
                record = {"step": done, **{k: round(float(v), 6) for k, v in logs.items()}, "images_per_s": rate,
                          "time": round(time.time(), 1)}
                with log_path.open("a") as log:
                    log.write(json.dumps(record) + "\n")
        bar.update(1)
        if config.sample_every and done % config.sample_every == 0 and done != config.steps:
            _sample(stage, accelerator, output_dir, done, log_path)
        if config.checkpoint_every and done % config.checkpoint_every == 0 and done != config.steps:
            save_checkpoint(accelerator, output_dir, config, done)
    bar.close()

    save_checkpoint(accelerator, output_dir, config, config.steps)
    _sample(stage, accelerator, output_dir, config.steps, log_path)
    final = output_dir / "final"
    if accelerator.is_main_process:
        stage.save(final)
        (final / "config.yaml").write_text(config_yaml(config))
    accelerator.wait_for_everyone()
    return final


def _sample(stage: Stage, accelerator, output_dir: Path, step: int, log_path: Path) -> None:
    if not accelerator.is_main_process:
        return
    path = output_dir / "samples" / f"step-{step:07d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = stage.sample(path)
    record = {"step": step, "sample": str(path), **metrics}
    with log_path.open("a") as log:
        log.write(json.dumps(record) + "\n")
    accelerator.print(f"step {step}: samples in {path}" + "".join(f", {k} {v:.3f}" for k, v in metrics.items()))

"""What many models and LoRAs cost a worker: loading a model cold, switching between loaded models, switching LoRAs.

    python -m benchmarks.bench_models [--model models/shapes64 | --sd15] [--repeats 5] [--dtype fp32]
                                      [--steps N --side PX] [--drop-caches] [--json out.json]

Measured on one model folder loaded twice (two models in memory), eager (no compile). `--sd15` uses the random-weight
SD 1.5-size folder of benchmarks/bench_engine.py (built once under var/bench-models):

- load: `load_model` from disk, as a worker's first job of a model does. The first round is reported apart: with
  `--drop-caches` (root only) the kernel's page cache is emptied before it, so it reads the disk; the later rounds
  read the page cache;
- image, same model / image after a switch: seconds for one image at the model's defaults, the previous image made
  by the same model or by the other one (both loaded, as under `WORKER_MODEL_MEMORY_MB` large enough for two);
- LoRA first use / LoRA switch / LoRA off: `generator.lora.activate` loading a LoRA file the first time, switching
  between two loaded LoRAs, and disabling them; and one image with a LoRA active against one without.

The LoRAs are made here: random rank-8 factors on every attention projection of the UNet (diffusers format).
Medians over `--repeats` rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from generator import GenerationRequest, generate, load_model
from generator.lora import LoraSpec, activate
from generator.lora_info import read_lora_info

PROMPT = "a red circle on a black background"


def make_lora(unet: torch.nn.Module, path: Path, *, rank: int = 8, seed: int = 0) -> LoraSpec:
    """A LoRA of random factors on the UNet's attention projections, saved in diffusers' key format."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v"):
            tensors[f"unet.{name}.lora_A.weight"] = 0.05 * torch.randn(rank, module.in_features, generator=generator)
            tensors[f"unet.{name}.lora_B.weight"] = 0.05 * torch.randn(module.out_features, rank, generator=generator)
    save_file(tensors, str(path))
    info = read_lora_info(path)
    return LoraSpec(name=path.stem, path=str(path), weight=1.0, sha256=info.sha256)


def seconds(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="models/shapes64")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--sd15", action="store_true", help="the SD 1.5-size random model instead of --model")
    parser.add_argument("--steps", type=int, help="steps an image (default: the model's)")
    parser.add_argument("--side", type=int, help="image side in pixels (default: the model's)")
    parser.add_argument("--drop-caches", action="store_true", help="empty the page cache before the first load (root)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.sd15:
        from benchmarks.bench_engine import DEFAULT_CACHE_DIR, sd15_model_folder

        args.model = str(sd15_model_folder(DEFAULT_CACHE_DIR))
    size = {} if args.side is None else {"width": args.side, "height": args.side}

    work = Path(tempfile.mkdtemp(prefix="bench-models-"))
    try:
        load = lambda: load_model(args.model, dtype=args.dtype, device="cpu")  # noqa: E731
        if args.drop_caches:
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("3\n")  # PermissionError unless root: say so, do not guess
        first_load = seconds(load)
        loads = [seconds(load) for _ in range(args.repeats)]
        a, b = load(), load()
        request = GenerationRequest(prompt=PROMPT, seed=1, steps=args.steps, **size)

        def image(model, **extra):
            return generate(model, [replace(request, **extra)])

        image(a), image(b)  # warm-up: first calls allocate
        same, switched = [], []
        for _ in range(args.repeats):
            same.append(seconds(lambda: image(a)))
            switched.append(seconds(lambda: image(b)))  # the previous image was a's
            image(a)

        loras = [make_lora(a.unet, work / f"style{seed}.safetensors", seed=seed) for seed in (1, 2)]
        lora_first = seconds(lambda: activate(a, [loras[0]]))
        activate(a, [loras[1]])
        lora_switch, lora_off, with_lora, without = [], [], [], []
        for _ in range(args.repeats):
            lora_switch.append(seconds(lambda: activate(a, [loras[0]])))
            with_lora.append(seconds(lambda: image(a, loras=(loras[0],))))
            lora_off.append(seconds(lambda: activate(a, [])))
            without.append(seconds(lambda: image(a)))
            activate(a, [loras[1]])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    median = statistics.median
    results = {
        "model": str(args.model),
        "dtype": args.dtype,
        "steps": request.steps or a.defaults.steps,
        "side": request.width or a.defaults.width,
        "threads": torch.get_num_threads(),
        "load_first_s": round(first_load, 3),
        "load_first_from_disk": args.drop_caches,
        "load_s": round(median(loads), 3),
        "image_same_model_s": round(median(same), 3),
        "image_after_switch_s": round(median(switched), 3),
        "lora_first_use_s": round(lora_first, 3),
        "lora_switch_s": round(median(lora_switch), 4),
        "lora_off_s": round(median(lora_off), 4),
        "image_with_lora_s": round(median(with_lora), 3),
        "image_without_lora_s": round(median(without), 3),
    }
    for key, value in results.items():
        print(f"{key:24} {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

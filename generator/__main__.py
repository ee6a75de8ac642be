"""Command line: `python -m generator generate …` and `python -m generator make-tiny …`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from generator.schedulers import SCHEDULERS

# The built-in model, trained on shapes64 by `python -m generator.train` (MODEL_CARD.md).
BUILTIN_MODEL = Path(__file__).resolve().parents[1] / "models" / "shapes64"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m generator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="generate images from a prompt")
    gen.add_argument(
        "--model", type=Path, default=BUILTIN_MODEL, help="a diffusers-layout model folder (default: built-in model)"
    )
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    gen.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's)")
    gen.add_argument("--guidance-rescale", type=float, default=0.0)
    gen.add_argument("--scheduler", choices=list(SCHEDULERS), help="default: the model's")
    gen.add_argument("--seed", type=int, help="default: drawn at random and printed")
    gen.add_argument("--width", type=int)
    gen.add_argument("--height", type=int)
    gen.add_argument("--num-images", type=int, default=1)
    gen.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (default: cuda when present)")
    gen.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"],
                     help="bf16 is the CPU fast path on CPUs with AVX-512 BF16 or AMX")
    gen.add_argument("--decoder", default="vae", choices=["vae", "tiny"],
                     help="tiny: the model's own tiny_vae/ decoder (faster, slightly different pixels)")
    gen.add_argument("--compile", action="store_true",
                     help="torch.compile the UNet for this request's shape first (pays off over many images)")
    gen.add_argument("--save-intermediates", type=Path, help="folder for each step's latents and preview")
    gen.add_argument("--out", type=Path, required=True, help="a .png path, or a folder")

    tiny = commands.add_parser("make-tiny", help="write a small random model folder for tests and demos")
    tiny.add_argument("--out", type=Path, required=True)
    tiny.add_argument("--sample-size", type=int, default=64, help="image side in pixels")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--inpainting", action="store_true", help="a 9-input-channel (inpainting) UNet")

    args = parser.parse_args(argv)
    if args.command == "make-tiny":
        from generator.tiny import TinyModelConfig, make_tiny_model

        config = TinyModelConfig(sample_size=args.sample_size, seed=args.seed, inpainting=args.inpainting)
        path = make_tiny_model(args.out, config)
        print(f"wrote a tiny model to {path}")
        return 0
    return _generate(args)


def _generate(args: argparse.Namespace) -> int:
    import torch

    from generator import GenerationRequest, ModelLoadError, generate_one, load_model, resolve_request

    try:
        model = load_model(args.model, device=args.device, dtype=args.dtype, decoder=args.decoder)
        request = resolve_request(
            model,
            GenerationRequest(
                prompt=args.prompt,
                negative_prompt=args.negative_prompt,
                width=args.width,
                height=args.height,
                steps=args.steps,
                guidance_scale=args.guidance,
                guidance_rescale=args.guidance_rescale,
                scheduler=args.scheduler,
                seed=args.seed,
                num_images=args.num_images,
            ),
        )
    except (ModelLoadError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    from generator.fastpath import Bucket, optimize

    buckets = [Bucket(request.width, request.height, request.num_images)] if args.compile else []
    optimize(model, buckets=buckets, guidance=request.guidance_scale > 1)

    bar = tqdm(total=request.steps, desc=f"{request.scheduler}, seed {request.seed}", unit="step")

    def on_step(state) -> None:
        bar.total = state.total
        bar.update(state.step - bar.n)
        if args.save_intermediates:
            args.save_intermediates.mkdir(parents=True, exist_ok=True)
            torch.save(state.latents.cpu(), args.save_intermediates / f"step-{state.step:04d}.pt")
            for k, preview in enumerate(state.preview_images()):
                preview.save(args.save_intermediates / f"step-{state.step:04d}-{k}.png")

    result = generate_one(model, request, callback=on_step)
    bar.close()

    paths = _output_paths(args.out, result.images)
    for image, path in zip(result.images, paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image.png)
        print(f"wrote {path} (seed {image.seed})")
    return 0


def _output_paths(out: Path, images) -> list[Path]:
    if out.suffix.lower() == ".png":
        if len(images) == 1:
            return [out]
        return [out.with_name(f"{out.stem}-{image.index}.png") for image in images]
    return [out / f"{image.seed}.png" for image in images]


if __name__ == "__main__":
    sys.exit(main())

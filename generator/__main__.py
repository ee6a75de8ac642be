"""Command line: `python -m generator generate …` and `python -m generator make-tiny …`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from generator.images import RESIZE_MODES
from generator.limits import HIRES_UPSCALERS
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
    image = gen.add_argument_group("img2img and inpainting")
    image.add_argument("--init-image", type=Path, help="start from this image (img2img; with --mask, inpainting)")
    image.add_argument("--strength", type=float, default=0.75, help="denoising strength in (0, 1] (default 0.75)")
    image.add_argument("--mask", type=Path, help="white (or transparent) = repaint, black = keep")
    image.add_argument("--mask-blur", type=int, default=4, help="mask blur radius in pixels (default 4)")
    image.add_argument("--inpaint-full-res", action="store_true", help="repaint only the masked area's box")
    image.add_argument("--inpaint-full-res-padding", type=int, default=32)
    image.add_argument("--resize-mode", default="just_resize", choices=list(RESIZE_MODES),
                       help="how the init image and mask are brought to width × height")
    variation = gen.add_argument_group("variations and high resolution")
    variation.add_argument("--subseed", type=int, help="variation seed (image i gets subseed + i)")
    variation.add_argument("--subseed-strength", type=float, default=0.0, help="0: the seed's image; 1: the subseed's")
    variation.add_argument("--hires-scale", type=float, default=1.0, help="two-pass hires fix: upscale by (1: off)")
    variation.add_argument("--hires-steps", type=int, default=0, help="second pass steps (0: as --steps)")
    variation.add_argument("--hires-strength", type=float, default=0.5)
    variation.add_argument("--hires-upscaler", default="latent", choices=list(HIRES_UPSCALERS))
    variation.add_argument("--vae-tile-size", type=int, default=0, help="tiled VAE, tile side in pixels (0: off)")
    fewer = gen.add_argument_group("fewer UNet evaluations (docs/speed.md)")
    fewer.add_argument("--guidance-cutoff", type=float, default=1.0,
                       help="guidance on this share of the steps, in (0, 1] (default 1: every step)")
    fewer.add_argument("--deep-cache-interval", type=int, default=1,
                       help="DeepCache: the deep blocks run every this many steps, 1 to 10 (default 1: off)")

    tiny = commands.add_parser("make-tiny", help="write a small random model folder for tests and demos")
    tiny.add_argument("--out", type=Path, required=True)
    tiny.add_argument("--sample-size", type=int, default=64, help="image side in pixels")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--inpainting", action="store_true", help="a 9-input-channel (inpainting) UNet")
    tiny.add_argument("--sdxl", action="store_true", help="an SDXL folder (two text encoders, added time ids)")

    args = parser.parse_args(argv)
    if args.command == "make-tiny":
        from generator.tiny import TinyModelConfig, TinySDXLConfig, make_tiny_model, make_tiny_sdxl

        if args.sdxl:
            config = TinySDXLConfig(sample_size=args.sample_size, seed=args.seed, inpainting=args.inpainting)
            path = make_tiny_sdxl(args.out, config)
        else:
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
        width = model.defaults.width if args.width is None else args.width
        height = model.defaults.height if args.height is None else args.height
        init_image, mask = _input_images(args, width, height)
        request = resolve_request(
            model,
            GenerationRequest(
                prompt=args.prompt,
                negative_prompt=args.negative_prompt,
                width=width,
                height=height,
                steps=args.steps,
                guidance_scale=args.guidance,
                guidance_rescale=args.guidance_rescale,
                scheduler=args.scheduler,
                seed=args.seed,
                num_images=args.num_images,
                init_image=init_image,
                mask_image=mask,
                strength=args.strength,
                mask_blur=args.mask_blur,
                inpaint_full_res=args.inpaint_full_res,
                inpaint_full_res_padding=args.inpaint_full_res_padding,
                subseed=args.subseed,
                subseed_strength=args.subseed_strength,
                hires_scale=args.hires_scale,
                hires_upscaler=args.hires_upscaler,
                hires_steps=args.hires_steps,
                hires_strength=args.hires_strength,
                vae_tile_size=args.vae_tile_size,
                guidance_cutoff=args.guidance_cutoff,
                deep_cache_interval=args.deep_cache_interval,
            ),
        )
    except (ModelLoadError, ValueError, OSError) as error:  # OSError: an input image that cannot be read
        print(f"error: {error}", file=sys.stderr)
        return 2

    from generator.fastpath import Bucket, optimize

    buckets = [Bucket(request.width, request.height, request.num_images)] if args.compile else []
    fewer = request.guidance_cutoff < 1 or request.deep_cache_interval > 1
    optimize(model, buckets=buckets, guidance=request.guidance_scale > 1, cond_only=request.guidance_cutoff < 1,
             deep_cache=fewer)

    bar = tqdm(total=None, desc=f"{request.scheduler}, seed {request.seed}", unit="step")

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


def _input_images(args: argparse.Namespace, width: int, height: int):
    """The init image and mask, read and brought to width × height by --resize-mode (as the web service does)."""
    from PIL import Image, ImageOps

    from generator.images import fit, fit_mask, mask_from_image

    if args.mask and not args.init_image:
        raise ValueError("--mask needs --init-image")
    if not args.init_image:
        return None, None
    with Image.open(args.init_image) as opened:
        init_image = fit(ImageOps.exif_transpose(opened), width, height, args.resize_mode)
    mask = None
    if args.mask:
        with Image.open(args.mask) as opened:
            mask = fit_mask(mask_from_image(ImageOps.exif_transpose(opened)), width, height, args.resize_mode)
    return init_image, mask


def _output_paths(out: Path, images) -> list[Path]:
    if out.suffix.lower() == ".png":
        if len(images) == 1:
            return [out]
        return [out.with_name(f"{out.stem}-{image.index}.png") for image in images]
    return [out / f"{image.seed}.png" for image in images]


if __name__ == "__main__":
    sys.exit(main())

"""Can a small UNet learn to place a shape in a named cell? From a clean cell signal, and through a text encoder.

Usage: python -m experiments.position_learning [--steps 400] [--batch 32] [--variants plain,coords,text:DIR]

Variants `plain` and `coords` leave the text encoder out, so only the UNet's spatial ability is measured: the
condition is a learned embedding of the scene's cell (one of 9), given as a one-token `encoder_hidden_states`.
Variant `text:DIR` conditions on the hidden states of DIR's frozen text encoder (DIR/text_encoder and
DIR/tokenizer, e.g. models/shapes64) for the scene's full caption, as the built-in UNet is: does the position
phrase reach the UNet through that encoder? Data: single-object
shapes64 training scenes (any colour, shape, size and background), encoded by the built-in model's VAE;
schedule and loss as in configs/unet.yaml (cosine, zero terminal SNR, v-prediction). The UNet has channels
32/64/64 with 32-channel heads. Variants `plain` and `text:DIR` see only the latents, as the built-in UNet
does; `coords` gets two more input channels holding x and y in [-1, 1] (CoordConv, Liu et al. 2018).

After training, 4 validation scenes a cell (36, DDIM 20 steps, no guidance) are drawn from their cells (or
captions) and read by the attribute evaluator; printed per variant: the fraction with exactly one object in
the asked cell (chance ≈ 1/9).
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from generator.data.shapes64 import CELLS, full_caption, make_scene, render
from generator.evaluation.attributes import measure
from generator.text import tokenize
from generator.train.data import to_tensor, to_uint8
from generator.train.unet import scheduler_config

ROOT = Path(__file__).resolve().parents[1]

MODEL = ROOT / "models" / "shapes64"


class Config:  # the keys scheduler_config reads, as in configs/unet.yaml
    beta_schedule, beta_start, beta_end = "cosine", 0.00085, 0.012
    prediction_type, zero_terminal_snr = "v_prediction", True


class CellUNet(torch.nn.Module):
    def __init__(self, variant: str):
        super().__init__()
        self.coords = variant == "coords"
        if variant.startswith("text:"):  # a frozen text encoder reads the caption
            folder = Path(variant.removeprefix("text:"))
            self.tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
            self.text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch.float32)
            self.text_encoder.eval().requires_grad_(False)
            width = self.text_encoder.config.hidden_size
        else:
            self.text_encoder, width = None, 64
            self.cells = torch.nn.Embedding(len(CELLS), width)
        self.unet = UNet2DConditionModel(
            sample_size=16, in_channels=6 if self.coords else 4, out_channels=4, block_out_channels=[32, 64, 64],
            layers_per_block=1, down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], cross_attention_dim=width,
            attention_head_dim=[1, 2, 2], norm_num_groups=16,
        )

    def condition(self, scenes) -> torch.Tensor:
        if self.text_encoder is None:
            return self.cells(torch.tensor([CELLS.index(s.objects[0].cell) for s in scenes]))[:, None]
        with torch.no_grad():
            ids = tokenize(self.tokenizer, [full_caption(s) for s in scenes])
            return self.text_encoder(ids).last_hidden_state

    def forward(self, x, t, condition):
        if self.coords:
            n, _, h, w = x.shape
            ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
            x = torch.cat([x, torch.stack([xs, ys]).expand(n, 2, h, w)], dim=1)
        return self.unet(x, t, condition).sample


def single_object_scenes(rng, size, split="train"):
    scenes = []
    while len(scenes) < size:
        scene = make_scene(0, int(rng.integers(2**31 - 1)), split)
        if len(scene.objects) == 1:
            scenes.append(scene)
    return scenes


def evaluation_scenes(per_cell: int):
    """`per_cell` validation scenes in each cell, in CELLS order."""
    rng, chosen = np.random.default_rng(1), {cell: [] for cell in CELLS}
    while any(len(c) < per_cell for c in chosen.values()):
        scene = single_object_scenes(rng, 1, "validation")[0]
        if len(chosen[scene.objects[0].cell]) < per_cell:
            chosen[scene.objects[0].cell].append(scene)
    return [scene for cell in CELLS for scene in chosen[cell]]


def run(variant: str, steps: int, batch_size: int, vae, schedule) -> tuple[float, float]:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = CellUNet(variant)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.01)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 50))
    start = time.perf_counter()
    for _ in range(steps):
        scenes = single_object_scenes(rng, batch_size)
        images = to_tensor(np.stack([np.asarray(render(s)) for s in scenes]))
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (batch_size,))
        prediction = model(schedule.add_noise(latents, noise, t), t, model.condition(scenes))
        loss = F.mse_loss(prediction, schedule.get_velocity(latents, noise, t))
        loss.backward()
        optimizer.step()
        warmup.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start

    model.eval()
    sampler = DDIMScheduler(**scheduler_config(Config))
    sampler.set_timesteps(20)
    scenes = evaluation_scenes(per_cell=4)
    condition = model.condition(scenes).detach()
    x = torch.randn(len(scenes), 4, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for t in sampler.timesteps:
            x = sampler.step(model(x, t.expand(len(x)), condition), t, x).prev_sample
        images = to_uint8(vae.decode(x / vae.config.scaling_factor).sample)
    right = 0
    for image, scene in zip(images, scenes, strict=True):
        components = measure(image).components
        right += len(components) == 1 and components[0].cell == scene.objects[0].cell
    return right / len(scenes), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--variants", default="plain,coords")
    args = parser.parse_args()
    vae = AutoencoderKL.from_pretrained(MODEL / "vae", torch_dtype=torch.float32).eval().requires_grad_(False)
    schedule = DDPMScheduler.from_config(scheduler_config(Config))
    print("| variant | steps × batch | one object in the asked cell (36 images) | training seconds |")
    print("|---|---|---|---|")
    for variant in args.variants.split(","):
        accuracy, seconds = run(variant, args.steps, args.batch, vae, schedule)
        print(f"| {variant} | {args.steps} × {args.batch} | {100 * accuracy:.0f}% | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()

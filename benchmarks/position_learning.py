"""Can a small UNet learn to place a shape in a named cell? With and without coordinate input channels.

Usage: python benchmarks/position_learning.py [--steps 400] [--batch 32] [--variants plain,coords]

The text encoder is left out, so only the UNet's spatial ability is measured: the condition is a learned
embedding of the scene's cell (one of 9), given as a one-token `encoder_hidden_states`. Data: single-object
shapes64 training scenes (any colour, shape, size and background), encoded by the built-in model's VAE;
schedule and loss as in configs/unet.yaml (cosine, zero terminal SNR, v-prediction). The UNet has channels
32/64/64 with 32-channel heads. Variant `plain` sees only the latents, as the built-in UNet does; `coords`
gets two more input channels holding x and y in [-1, 1] (CoordConv, Liu et al. 2018).

After training, 4 images a cell (36, DDIM 20 steps, no guidance) are decoded and read by the attribute
evaluator; printed per variant: the fraction with exactly one object in the asked cell (chance ≈ 1/9).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from a checkout

from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel  # noqa: E402

from generator.data.shapes64 import CELLS, make_scene, render  # noqa: E402
from generator.evaluation.attributes import measure  # noqa: E402
from generator.train.data import to_tensor, to_uint8  # noqa: E402
from generator.train.unet import scheduler_config  # noqa: E402

MODEL = ROOT / "models" / "shapes64"


class Config:  # the keys scheduler_config reads, as in configs/unet.yaml
    beta_schedule, beta_start, beta_end = "cosine", 0.00085, 0.012
    prediction_type, zero_terminal_snr = "v_prediction", True


class CellUNet(torch.nn.Module):
    def __init__(self, coords: bool):
        super().__init__()
        self.coords = coords
        self.cells = torch.nn.Embedding(len(CELLS), 64)
        self.unet = UNet2DConditionModel(
            sample_size=16, in_channels=6 if coords else 4, out_channels=4, block_out_channels=[32, 64, 64],
            layers_per_block=1, down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], cross_attention_dim=64,
            attention_head_dim=[1, 2, 2], norm_num_groups=16,
        )

    def forward(self, x, t, cell):
        if self.coords:
            n, _, h, w = x.shape
            ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
            x = torch.cat([x, torch.stack([xs, ys]).expand(n, 2, h, w)], dim=1)
        return self.unet(x, t, self.cells(cell)[:, None]).sample


def batch(rng, size):
    scenes = []
    while len(scenes) < size:
        scene = make_scene(0, int(rng.integers(2**31 - 1)), "train")
        if len(scene.objects) == 1:
            scenes.append(scene)
    images = to_tensor(np.stack([np.asarray(render(s)) for s in scenes]))
    return images, torch.tensor([CELLS.index(s.objects[0].cell) for s in scenes])


def run(coords: bool, steps: int, batch_size: int, vae, schedule) -> tuple[float, float]:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = CellUNet(coords)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 50))
    start = time.perf_counter()
    for _ in range(steps):
        images, cells = batch(rng, batch_size)
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (batch_size,))
        prediction = model(schedule.add_noise(latents, noise, t), t, cells)
        loss = F.mse_loss(prediction, schedule.get_velocity(latents, noise, t))
        loss.backward()
        optimizer.step()
        warmup.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start

    model.eval()
    sampler = DDIMScheduler(**scheduler_config(Config))
    sampler.set_timesteps(20)
    cells = torch.arange(len(CELLS)).repeat_interleave(4)
    x = torch.randn(len(cells), 4, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for t in sampler.timesteps:
            x = sampler.step(model(x, t.expand(len(x)), cells), t, x).prev_sample
        images = to_uint8(vae.decode(x / vae.config.scaling_factor).sample)
    right = 0
    for image, cell in zip(images, cells.tolist(), strict=True):
        components = measure(image).components
        right += len(components) == 1 and components[0].cell == CELLS[cell]
    return right / len(cells), seconds


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
        accuracy, seconds = run(variant == "coords", args.steps, args.batch, vae, schedule)
        print(f"| {variant} | {args.steps} × {args.batch} | {100 * accuracy:.0f}% | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()

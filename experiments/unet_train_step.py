"""Training-step speed of the built-in model's UNet shape: attention heads, and fp32 against bf16 autocast.

Usage: python -m experiments.unet_train_step [--repeats 3]

Channels 64/128/192, one layer per block, text context 24 × 128, batch 64 of 16 × 16 latents, AdamW: the
UNet stage's step without data drawing and VAE encoding. Two head layouts:

* "32 heads": `attention_head_dim=32` as diffusers reads it, a head *count* (32 heads of 2–6 channels);
  the first built-in model was trained so.
* "32-channel heads": `head_channels: 32` in configs/unet.yaml (2, 4 and 6 heads).

Images/s are medians of `--repeats` timed steps after one warm-up, all in one process.
"""

import argparse

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from benchmarks.cpu_peak import seconds

CHANNELS = [64, 128, 192]
LAYOUTS = {"32 heads": 32, "32-channel heads": [c // 32 for c in CHANNELS]}


def make_unet(attention_head_dim) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=CHANNELS, layers_per_block=1,
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        cross_attention_dim=128, attention_head_dim=attention_head_dim, norm_num_groups=16,
    )


def images_per_second(unet, bf16: bool, repeats: int, batch: int = 64) -> float:
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    x, context = torch.randn(batch, 4, 16, 16), torch.randn(batch, 24, 128)
    timesteps = torch.randint(0, 1000, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            prediction = unet(x, timesteps, context).sample
        F.mse_loss(prediction.float(), x).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return batch / seconds(step, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}")
    print("| heads | fp32 images/s | bf16 autocast images/s |")
    print("|---|---|---|")
    for name, layout in LAYOUTS.items():
        torch.manual_seed(0)
        unet = make_unet(layout)
        fp32 = images_per_second(unet, False, args.repeats)
        bf16 = images_per_second(unet, True, args.repeats)
        print(f"| {name} | {fp32:.1f} | {bf16:.1f} |", flush=True)


if __name__ == "__main__":
    main()

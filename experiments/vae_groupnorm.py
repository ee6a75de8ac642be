"""Why the VAE uses 8 GroupNorm groups: 60 training steps of the built-in VAE's architecture per setting.

`python -m experiments.vae_groupnorm 32 sample 3e-4` (then `8 sample 3e-4`, `32 mode 3e-4`): arguments are the
number of groups, `sample` or `mode` of the posterior, and the learning rate. It prints the loss (L1 +
1e-6 KL per pixel value) every 10 steps. Measured on this machine (2026-11-22): with 32 groups the loss stayed
at 0.61 after 60 steps (predicting gray everywhere, L1 = 2/3 for the three backgrounds); with 8 groups it
fell to 0.10.
"""

import sys
import time

import numpy as np
import torch
from diffusers import AutoencoderKL

from generator.train.data import training_batch

torch.manual_seed(0)
groups, use_sample, lr = int(sys.argv[1]), sys.argv[2] == "sample", float(sys.argv[3])
vae = AutoencoderKL(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
    block_out_channels=[32, 64, 128], layers_per_block=1, latent_channels=4, norm_num_groups=groups, sample_size=64,
)
optimizer = torch.optim.AdamW(vae.parameters(), lr=lr)
start = time.time()
for step in range(60):
    x, _ = training_batch(np.random.default_rng([0, step]), 16, 0)
    posterior = vae.encode(x).latent_dist
    z = posterior.sample() if use_sample else posterior.mode()
    loss = (vae.decode(z).sample - x).abs().mean() + 1e-6 * posterior.kl().sum() / x.numel()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    if step % 10 == 9:
        print(step + 1, round(loss.item(), 3), flush=True)
print(f"groups {groups}, {'sampled' if use_sample else 'mode'} latents, lr {lr}: {time.time() - start:.0f} s")

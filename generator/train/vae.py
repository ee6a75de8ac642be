"""VAE stage: an `AutoencoderKL` trained as latent diffusion's autoencoder.

Loss = L1(x, x̂) + perceptual_weight · perceptual(x, x̂) + kl_weight · KL + disc_weight · adversarial.

- The perceptual term compares hidden states of the CLIP stage's image tower (frozen) on x and x̂:
  a network trained here stands where LPIPS would use a downloaded VGG.
- KL is summed over latent elements and divided by the number of pixel values, so `kl_weight`
  means what it means in latent diffusion, whose reconstruction loss is summed per image.
- The optional patch discriminator (hinge loss) joins after `disc_start` steps.

The sample sheet puts validation images over their reconstructions; the reconstructions go through
the pixel attribute evaluator, which they should pass as often as the real images do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from generator.data import shapes64
from generator.evaluation.attributes import evaluate
from generator.train.data import grid, to_tensor, to_uint8, training_batch, validation_pairs
from generator.train.optim import make_optimizer


def make_vae(config):
    from diffusers import AutoencoderKL

    channels = list(config.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * len(channels),
        up_block_types=["UpDecoderBlock2D"] * len(channels),
        block_out_channels=channels,
        layers_per_block=config.layers_per_block,
        latent_channels=config.latent_channels,
        norm_num_groups=config.norm_num_groups,
        sample_size=shapes64.CANVAS,
    )


def patch_discriminator(channels: int = 64) -> nn.Module:
    """A PatchGAN: one real/fake logit per 16 × 16 patch of a 64 × 64 image (receptive field ~22 px)."""
    return nn.Sequential(
        nn.Conv2d(3, channels, 4, stride=2, padding=1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1),
        nn.GroupNorm(32, 2 * channels),
        nn.LeakyReLU(0.2),
        nn.Conv2d(2 * channels, 1, 3, padding=1),
    )


class PerceptualLoss(nn.Module):
    """Mean squared difference of normalised hidden states of a frozen CLIP image tower."""

    def __init__(self, clip_dir: str | Path, layers: list[int]):
        super().__init__()
        from transformers import CLIPModel

        clip = CLIPModel.from_pretrained(Path(clip_dir) / "clip", dtype=torch.float32)
        self.tower = clip.vision_model.eval().requires_grad_(False)
        self.layers = list(layers)
        depth = self.tower.config.num_hidden_layers
        if not self.layers or not all(0 <= layer <= depth for layer in self.layers):
            raise ValueError(f"perceptual_layers must be hidden-state indices from 0 to {depth}, got {self.layers}")

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        both = self.tower(pixel_values=torch.cat([reconstruction, target]), output_hidden_states=True).hidden_states
        loss = reconstruction.new_zeros(())
        for layer in self.layers:
            fake, real = F.layer_norm(both[layer], both[layer].shape[-1:]).chunk(2)
            loss = loss + F.mse_loss(fake, real.detach())
        return loss / len(self.layers)


class VaeStage:
    def __init__(self, config, accelerator):
        self.config, self.accelerator = config, accelerator
        vae = make_vae(config)
        optimizer, schedule = make_optimizer(vae.parameters(), config)
        self.perceptual = PerceptualLoss(config.clip_dir, config.perceptual_layers).to(accelerator.device)
        self.schedule = schedule
        accelerator.register_for_checkpointing(schedule)
        if config.disc_weight > 0:
            discriminator = patch_discriminator()
            disc_optimizer = torch.optim.AdamW(
                discriminator.parameters(), lr=config.disc_learning_rate, betas=(0.5, 0.9), weight_decay=0.0
            )
            self.vae, self.optimizer, self.discriminator, self.disc_optimizer = accelerator.prepare(
                vae, optimizer, discriminator, disc_optimizer
            )
        else:
            self.vae, self.optimizer = accelerator.prepare(vae, optimizer)
            self.discriminator = None
        self.validation = validation_pairs(config.eval_images)

    def losses(self, images: torch.Tensor, step: int) -> tuple[torch.Tensor, dict, torch.Tensor]:
        posterior = self.vae.encode(images).latent_dist
        reconstruction = self.vae.decode(posterior.sample()).sample
        l1 = (reconstruction - images).abs().mean()
        perceptual = self.perceptual(reconstruction, images)
        kl = posterior.kl().sum() / images.numel()
        loss = l1 + self.config.perceptual_weight * perceptual + self.config.kl_weight * kl
        logs = {"l1": l1.item(), "perceptual": perceptual.item(), "kl": kl.item()}
        if self.discriminator is not None and step >= self.config.disc_start:
            adversarial = -self.discriminator(reconstruction).mean()
            loss = loss + self.config.disc_weight * adversarial
            logs["g_adv"] = adversarial.item()
        return loss, logs, reconstruction

    def train_step(self, step: int, rng: np.random.Generator) -> dict:
        images, _ = training_batch(rng, self.config.batch_size, self.config.data_seed)
        images = images.to(self.accelerator.device)
        self.vae.train()
        loss, logs, reconstruction = self.losses(images, step)
        self.accelerator.backward(loss)
        if self.config.grad_clip:
            self.accelerator.clip_grad_norm_(self.vae.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.discriminator is not None and step >= self.config.disc_start:
            # Hinge loss: real patches above +1, reconstructed patches below -1.
            real = self.discriminator(images)
            fake = self.discriminator(reconstruction.detach())
            disc_loss = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
            self.accelerator.backward(disc_loss)
            self.disc_optimizer.step()
            self.disc_optimizer.zero_grad(set_to_none=True)
            logs["d_loss"] = disc_loss.item()
        return {"loss": loss.item(), **logs, "lr": self.schedule.get_last_lr()[0]}

    @torch.no_grad()
    def reconstruct(self, images: np.ndarray, batch: int = 64) -> np.ndarray:
        vae = self.accelerator.unwrap_model(self.vae).eval()
        out = []
        for start in range(0, len(images), batch):
            pixels = to_tensor(images[start : start + batch]).to(self.accelerator.device)
            out.append(to_uint8(vae.decode(vae.encode(pixels).latent_dist.mode()).sample))
        return np.concatenate(out)

    def sample(self, path: Path) -> dict:
        images, captions = self.validation
        reconstructions = self.reconstruct(images)
        grid(np.concatenate([images[:16], reconstructions[:16]]), columns=16).save(path)
        report = evaluate(zip(reconstructions, captions, strict=True))
        mse = np.mean((images.astype(np.float64) - reconstructions) ** 2)
        return {"recon_accuracy": report.overall, "recon_psnr": float(10 * np.log10(255**2 / max(mse, 1e-10)))}

    @torch.no_grad()
    def save(self, out: Path) -> None:
        """`out/vae`, with `scaling_factor` set so training latents have unit standard deviation."""
        vae = self.accelerator.unwrap_model(self.vae).eval()
        rng = np.random.default_rng([self.config.seed, 2**31])
        images, _ = training_batch(rng, 512, self.config.data_seed)
        latents = torch.cat([vae.encode(chunk).latent_dist.mode() for chunk in images.split(64)])
        vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
        vae.save_pretrained(out / "vae")

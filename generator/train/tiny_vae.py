"""Tiny VAE stage: an `AutoencoderTiny` (TAESD's architecture) trained for one model, the fast path's cheap decoder.

The teacher is the model's own `AutoencoderKL` (frozen). Both sides work in the UNet's latent space,
z = scaling_factor · mode(q(z | x)), so the tiny decoder takes what the sampler makes as it is:

    decoder loss = L1(D_tiny(z), x) + perceptual_weight · perceptual(D_tiny(z), x)
    encoder loss = MSE(E_tiny(x), z)

The decoder learns from the real image x, not from the teacher's reconstruction, so it is not bound
to the teacher's blur. The encoder is trained too, so the saved folder is a whole `AutoencoderTiny`;
generation uses only the decoder. The sample sheet shows validation images, the teacher's
reconstructions and the tiny decoder's, and runs both through the attribute evaluator.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from generator.evaluation.attributes import evaluate
from generator.train.data import grid, to_tensor, to_uint8, training_batch, validation_pairs
from generator.train.optim import make_optimizer
from generator.train.vae import PerceptualLoss


def make_tiny_vae(config, latent_channels: int, factor: int):
    from diffusers import AutoencoderTiny

    blocks = int(np.log2(factor)) + 1  # each block after the first halves (encoder) or doubles (decoder) the side
    channels = [config.channels] * blocks
    return AutoencoderTiny(
        encoder_block_out_channels=channels,
        decoder_block_out_channels=channels,
        num_encoder_blocks=[1] + [config.blocks_per_level] * (blocks - 1),
        num_decoder_blocks=[config.blocks_per_level] * (blocks - 1) + [1],
        latent_channels=latent_channels,
    )


class TinyVaeStage:
    def __init__(self, config, accelerator):
        from diffusers import AutoencoderKL

        self.config, self.accelerator = config, accelerator
        self.teacher = AutoencoderKL.from_pretrained(Path(config.model_dir) / "vae", torch_dtype=torch.float32)
        self.teacher.eval().requires_grad_(False).to(accelerator.device)
        factor = 2 ** (len(self.teacher.config.block_out_channels) - 1)
        tiny = make_tiny_vae(config, self.teacher.config.latent_channels, factor)
        optimizer, schedule = make_optimizer(tiny.parameters(), config)
        self.schedule = schedule
        accelerator.register_for_checkpointing(schedule)
        self.tiny, self.optimizer = accelerator.prepare(tiny, optimizer)
        self.perceptual = PerceptualLoss(config.model_dir, config.perceptual_layers).to(accelerator.device)
        self.validation = validation_pairs(config.eval_images)

    @torch.no_grad()
    def teacher_latents(self, images: torch.Tensor) -> torch.Tensor:
        return self.teacher.encode(images).latent_dist.mode() * self.teacher.config.scaling_factor  # (N, C, h, w)

    def train_step(self, step: int, rng: np.random.Generator) -> dict:
        images, _ = training_batch(rng, self.config.batch_size, self.config.data_seed)
        images = images.to(self.accelerator.device)
        latents = self.teacher_latents(images)
        tiny = self.accelerator.unwrap_model(self.tiny)
        self.tiny.train()
        # decode/encode bypass the prepared module's forward, so `mixed_precision` needs the autocast said here
        with self.accelerator.autocast():
            decoded = tiny.decode(latents).sample
            perceptual = self.perceptual(decoded, images)
            encoded = tiny.encode(images).latents
        l1 = (decoded.float() - images).abs().mean()
        encoder = F.mse_loss(encoded.float(), latents)
        loss = l1 + self.config.perceptual_weight * perceptual.float() + encoder
        self.accelerator.backward(loss)
        if self.config.grad_clip:
            self.accelerator.clip_grad_norm_(self.tiny.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.item(), "l1": l1.item(), "perceptual": perceptual.item(), "encoder_mse": encoder.item(),
                "lr": self.schedule.get_last_lr()[0]}

    @torch.no_grad()
    def reconstruct(self, images: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """(teacher's reconstructions, tiny decoder's) of uint8 images, both from the teacher's latents."""
        tiny = self.accelerator.unwrap_model(self.tiny).eval()
        teacher_out, tiny_out = [], []
        for start in range(0, len(images), batch):
            pixels = to_tensor(images[start : start + batch]).to(self.accelerator.device)
            latents = self.teacher_latents(pixels)
            teacher_out.append(to_uint8(self.teacher.decode(latents / self.teacher.config.scaling_factor).sample))
            tiny_out.append(to_uint8(tiny.decode(latents).sample))
        return np.concatenate(teacher_out), np.concatenate(tiny_out)

    def sample(self, path: Path) -> dict:
        images, captions = self.validation
        teacher, tiny = self.reconstruct(images)
        grid(np.concatenate([images[:16], teacher[:16], tiny[:16]]), columns=16).save(path)
        metrics = {}
        for name, reconstructions in (("teacher", teacher), ("tiny", tiny)):
            report = evaluate(zip(reconstructions, captions, strict=True))
            mse = np.mean((images.astype(np.float64) - reconstructions) ** 2)
            metrics[f"{name}_accuracy"] = report.overall
            metrics[f"{name}_psnr"] = float(10 * np.log10(255**2 / max(mse, 1e-10)))
        return metrics

    @torch.no_grad()
    def save(self, out: Path) -> None:
        tiny = self.accelerator.unwrap_model(self.tiny).eval()
        tiny.to(torch.float16).save_pretrained(out / "tiny_vae", safe_serialization=True)
        tiny.to(torch.float32)
        if self.config.export_dir:  # e.g. models/shapes64: the model folder it was trained for
            shutil.copytree(out / "tiny_vae", Path(self.config.export_dir) / "tiny_vae", dirs_exist_ok=True)

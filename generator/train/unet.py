"""UNet stage: a `UNet2DConditionModel` on the VAE's latents, conditioned on the CLIP text tower.

- Noise schedule: `linear`, `scaled_linear` or `cosine` betas, optionally rescaled to zero terminal
  SNR (Lin et al. 2024) so the last training step is pure noise and the starting noise cannot decide
  the layout; ε- or v-prediction; optional offset noise.
- Classifier-free guidance: a caption is replaced by "" with probability `cond_dropout`.
- The text encoder is frozen, or fine-tuned with the UNet at `text_encoder_lr`.
- EMA weights (with warm-up) are what samples use and what is exported.

`save` writes a complete diffusers-layout model folder in fp16: tokenizer, text_encoder, vae, unet,
scheduler, model_index.json and generator.json (the defaults), plus `clip/` for evaluation.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from generator.data import shapes64
from generator.data.shapes64 import caption
from generator.evaluation.attributes import evaluate
from generator.text import tokenize
from generator.train.data import grid, to_tensor, training_batch, training_scenes
from generator.train.optim import make_optimizer

BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}


def scheduler_config(config) -> dict:
    """The training schedule, as every sampler of the exported model reads it."""
    if config.beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"beta_schedule must be one of {', '.join(BETA_SCHEDULES)}, got {config.beta_schedule!r}")
    if config.prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be epsilon or v_prediction, got {config.prediction_type!r}")
    return {
        "num_train_timesteps": 1000,
        "beta_schedule": BETA_SCHEDULES[config.beta_schedule],
        "beta_start": config.beta_start,
        "beta_end": config.beta_end,
        "prediction_type": config.prediction_type,
        "rescale_betas_zero_snr": config.zero_terminal_snr,
        # With zero terminal SNR the sampler must start at t = 999 (Lin et al. 2024, §3.3).
        "timestep_spacing": "trailing" if config.zero_terminal_snr else "leading",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
    }


def make_unet(config, cross_attention_dim: int, latent_channels: int, sample_size: int):
    from diffusers import UNet2DConditionModel

    channels = list(config.block_out_channels)
    if any(c % config.head_channels for c in channels):
        raise ValueError(f"block_out_channels {channels} must be multiples of head_channels {config.head_channels}")
    levels = range(len(channels) - 1) if config.attention_levels is None else config.attention_levels
    down = ["CrossAttnDownBlock2D" if i in levels else "DownBlock2D" for i in range(len(channels))]
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        block_out_channels=channels,
        layers_per_block=config.layers_per_block,
        down_block_types=down,
        up_block_types=[name.replace("Down", "Up") for name in reversed(down)],
        cross_attention_dim=config.cross_attention_dim or cross_attention_dim,
        attention_head_dim=[c // config.head_channels for c in channels],  # diffusers: heads per block
        norm_num_groups=config.norm_num_groups,
    )


def sample_prompts(count: int) -> list[str]:
    """Validation prompts for the sample sheets: single, held-out and relation prompts in turn."""
    sets = shapes64.validation_prompt_sets(seed=1, count=max(1, -(-count // 3)))
    prompts = [case.prompt for row in zip(*sets.values(), strict=True) for case in row]
    return prompts[:count]


def draw_timesteps(n: int, total: int, high_noise_fraction: float, high_noise_from: int,
                   generator: torch.Generator) -> torch.Tensor:
    """(n,) training timesteps: uniform in [0, total), except that each one, with probability
    `high_noise_fraction`, is drawn from [high_noise_from, total) instead, where the layout is decided."""
    timesteps = torch.randint(0, total, (n,), generator=generator)
    if high_noise_fraction:
        high = torch.randint(high_noise_from, total, (n,), generator=generator)
        timesteps = torch.where(torch.rand(n, generator=generator) < high_noise_fraction, high, timesteps)
    return timesteps


def pool_indices(step: int, batch_size: int, size: int, seed: int) -> np.ndarray:
    """The pool entries step `step` trains on. The pool is read in passes, each one a permutation drawn from
    (`seed`, pass), so every entry is used once a pass and a resumed run reads what an uninterrupted one would."""
    positions = np.arange(step * batch_size, (step + 1) * batch_size)
    passes = positions // size
    indices = np.empty(batch_size, dtype=np.int64)
    for number in np.unique(passes):
        at = passes == number
        indices[at] = np.random.default_rng([seed, int(number)]).permutation(size)[positions[at] % size]
    return indices


@dataclass
class LatentPool:
    """Training scenes with their VAE posteriors, scaled to the UNet's latent space: (N, C, h, w) float32 each."""

    scenes: list
    mean: torch.Tensor
    std: torch.Tensor

    def draw(self, indices: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        index = torch.from_numpy(indices)
        mean, std = self.mean[index], self.std[index]
        return mean + std * torch.randn(mean.shape, generator=generator)


POOL_STREAM = 0x706F6F6C  # the pool's own random stream, apart from the steps' [seed, step, process]


def pool_scenes(config, size: int, process_index: int = 0) -> list:
    """The training scenes a run's latent pool holds (one pool per process), in pool order."""
    rng = np.random.default_rng([config.seed, process_index, POOL_STREAM])
    return training_scenes(rng, size, config.data_seed, two_object_fraction=config.two_object_fraction)


class UnetStage:
    def __init__(self, config, accelerator):
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from diffusers.models.attention_processor import AttnProcessor
        from diffusers.training_utils import EMAModel
        from transformers import CLIPTextModel, CLIPTokenizer

        self.config, self.accelerator = config, accelerator
        clip_dir = Path(config.clip_dir)
        self.tokenizer = CLIPTokenizer.from_pretrained(clip_dir / "tokenizer")
        # fp32 whatever the saved dtype: `clip_dir` and `vae_dir` may name an fp16 exported model folder.
        text_encoder = CLIPTextModel.from_pretrained(clip_dir / "text_encoder", dtype=torch.float32)
        self.vae = AutoencoderKL.from_pretrained(Path(config.vae_dir) / "vae", torch_dtype=torch.float32)
        self.vae.eval().requires_grad_(False)
        self.vae.to(accelerator.device)
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        if config.init_from:  # go on from an exported model's UNet (e.g. models/shapes64), with fresh optimizer state
            unet = UNet2DConditionModel.from_pretrained(Path(config.init_from) / "unet", torch_dtype=torch.float32)
        else:
            unet = make_unet(
                config, text_encoder.config.hidden_size, self.vae.config.latent_channels, shapes64.CANVAS // factor
            )
        # On the CPU, attention as plain matmuls and softmax: SDPA's fused CPU kernel takes longer over these short
        # sequences, its backward most of all (the stage's step about 1.2 x faster without it, BENCHMARKS.md). GPUs
        # keep SDPA's fused kernels.
        if accelerator.device.type == "cpu":
            unet.set_attn_processor(AttnProcessor())
        self.noise_scheduler = DDPMScheduler.from_config(scheduler_config(config))  # drops DDIM-only keys

        groups = [{"params": list(unet.parameters())}]
        if config.train_text_encoder:
            groups.append({"params": list(text_encoder.parameters()), "lr": config.text_encoder_lr})
        else:
            text_encoder.requires_grad_(False).eval()
        optimizer, schedule = make_optimizer(groups, config)
        self.schedule = schedule
        accelerator.register_for_checkpointing(schedule)
        if config.train_text_encoder:
            self.unet, self.text_encoder, self.optimizer = accelerator.prepare(unet, text_encoder, optimizer)
        else:
            self.unet, self.optimizer = accelerator.prepare(unet, optimizer)
            self.text_encoder = text_encoder.to(accelerator.device)
        self.ema = EMAModel(
            self.trainable_parameters(), decay=config.ema_decay, use_ema_warmup=True, inv_gamma=1.0, power=2 / 3
        )
        accelerator.register_for_checkpointing(self.ema)
        self.prompts = sample_prompts(config.sample_prompts)
        self.pool = self.encode_pool(config.latent_pool) if config.latent_pool else None

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        parameters = list(self.unet.parameters())
        if self.config.train_text_encoder:
            parameters += list(self.text_encoder.parameters())
        return parameters

    @torch.no_grad()
    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen VAE's posterior mean and std, scaled to the UNet's latent space: (N, C, h, w) float32 each.

        The VAE encodes under the UNet's autocast (bf16 where `mixed_precision` says so): in fp32 it took about a
        quarter of a bf16 step (`python -m experiments.unet_stage_step`)."""
        with self.accelerator.autocast():
            posterior = self.vae.encode(images).latent_dist
            mean, std = posterior.mean.float(), posterior.std.float()
        scale = self.vae.config.scaling_factor
        return mean * scale, std * scale

    def latents(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A draw from the frozen VAE's posterior, scaled: (N, C, h, w) float32."""
        mean, std = self.posterior(images)
        return mean + std * torch.randn(mean.shape, generator=generator)

    @torch.no_grad()
    def encode_pool(self, size: int, chunk: int = 128) -> LatentPool:
        """`size` training scenes, rendered and encoded once (under the stage's autocast, as `latents` does)."""
        from tqdm.auto import tqdm

        accelerator = self.accelerator
        scenes = pool_scenes(self.config, size, accelerator.process_index)
        start, means, stds = time.perf_counter(), [], []
        for i in tqdm(range(0, size, chunk), desc="latent pool", disable=not accelerator.is_main_process):
            images = to_tensor(np.stack([np.asarray(shapes64.render(scene)) for scene in scenes[i : i + chunk]]))
            mean, std = self.posterior(images.to(accelerator.device))
            means.append(mean.cpu())
            stds.append(std.cpu())
        accelerator.print(f"latent pool: {size} scenes encoded in {time.perf_counter() - start:.0f} s")
        return LatentPool(scenes, torch.cat(means), torch.cat(stds))

    def train_step(self, step: int, rng: np.random.Generator) -> dict:
        config, device = self.config, self.accelerator.device
        if self.pool is None:
            images, captions = training_batch(
                rng, config.batch_size, config.data_seed, two_object_fraction=config.two_object_fraction
            )
        else:
            indices = pool_indices(step, config.batch_size, len(self.pool.scenes), config.seed)
            captions = [caption(self.pool.scenes[i], rng) for i in indices]
        captions = ["" if rng.random() < config.cond_dropout else text for text in captions]
        generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
        if self.pool is None:
            latents = self.latents(images.to(device), generator)
        else:
            latents = self.pool.draw(indices, generator).to(device)
        self.unet.train()
        self.text_encoder.train(config.train_text_encoder)
        with torch.set_grad_enabled(config.train_text_encoder):
            hidden = self.text_encoder(tokenize(self.tokenizer, captions).to(device))[0]
        noise = torch.randn(latents.shape, generator=generator)
        if config.offset_noise:
            noise = noise + config.offset_noise * torch.randn(latents.shape[:2] + (1, 1), generator=generator)
        timesteps = draw_timesteps(len(latents), self.noise_scheduler.config.num_train_timesteps,
                                   config.high_noise_fraction, config.high_noise_from, generator)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        prediction = self.unet(noisy, timesteps, hidden).sample
        loss = F.mse_loss(prediction.float(), target.float())
        self.accelerator.backward(loss)
        if config.grad_clip:
            self.accelerator.clip_grad_norm_(self.trainable_parameters(), config.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(self.trainable_parameters())
        return {"loss": loss.item(), "lr": self.schedule.get_last_lr()[0], "ema_decay": self.ema.cur_decay_value or 0}

    def ema_model(self):
        """A `LoadedModel` holding copies of the modules with the EMA weights, for sampling and export."""
        from generator.loading import LoadedModel
        from generator.model_info import ModelDefaults

        unet = copy.deepcopy(self.accelerator.unwrap_model(self.unet)).eval()
        text_encoder = copy.deepcopy(self.accelerator.unwrap_model(self.text_encoder)).eval()
        parameters = list(unet.parameters())
        if self.config.train_text_encoder:
            parameters += list(text_encoder.parameters())
        self.ema.copy_to(parameters)
        defaults = ModelDefaults(
            width=shapes64.CANVAS,
            height=shapes64.CANVAS,
            steps=self.config.default_steps,
            guidance_scale=self.config.default_guidance_scale,
            scheduler=self.config.default_scheduler,
        )
        scheduler = {"_class_name": "DDIMScheduler", **scheduler_config(self.config)}
        return LoadedModel(
            name="training", path=Path(self.config.output_dir), content_hash="", tokenizer=self.tokenizer,
            text_encoder=text_encoder, unet=unet, vae=self.vae, scheduler_config=scheduler,
            device=self.accelerator.device, dtype=torch.float32, defaults=defaults,
        )

    @torch.no_grad()
    def sample(self, path: Path) -> dict:
        """A sheet of the sample prompts (seed 0) and their attribute accuracy, overall and per prompt set."""
        from generator.pipeline import GenerationRequest, generate

        model = self.ema_model()
        requests = [GenerationRequest(prompt=prompt, seed=0) for prompt in self.prompts]
        results = generate(model, requests)
        images = np.stack([np.asarray(result.images[0].image) for result in results])
        grid(images, columns=min(len(images), 8)).save(path)
        report = evaluate(zip(images, self.prompts, strict=True))
        return {"sample_accuracy": report.overall}

    @torch.no_grad()
    def save(self, out: Path) -> None:
        export(self.ema_model(), self.config, out)
        if self.config.export_dir:
            shutil.copytree(out, self.config.export_dir, dirs_exist_ok=True)


def export(model, config, out: Path) -> None:
    """The complete fp16 diffusers-layout folder of `model` (a LoadedModel) at `out`."""
    import diffusers

    from generator.tiny import write_model_index

    out.mkdir(parents=True, exist_ok=True)
    model.tokenizer.save_pretrained(out / "tokenizer")
    for name in ("text_encoder", "unet", "vae"):
        module = copy.deepcopy(getattr(model, name)).to(torch.float16)
        module.save_pretrained(out / name, safe_serialization=True)
        # A module loaded with from_pretrained (the VAE, or the UNet under `init_from`) records its source's local path.
        config_file = out / name / "config.json"
        module_config = json.loads(config_file.read_text())
        if module_config.pop("_name_or_path", None) is not None:
            config_file.write_text(json.dumps(module_config, indent=2, sort_keys=True) + "\n")
    diffusers.DDIMScheduler(**scheduler_config(config)).save_pretrained(out / "scheduler")
    clip = Path(config.clip_dir) / "clip"
    if clip.is_dir():  # the evaluation's image features and CLIP score
        from transformers import CLIPModel

        CLIPModel.from_pretrained(clip, dtype=torch.float16).save_pretrained(out / "clip", safe_serialization=True)
    write_model_index(out)
    defaults = {
        "steps": config.default_steps,
        "guidance_scale": config.default_guidance_scale,
        "scheduler": config.default_scheduler,
    }
    (out / "generator.json").write_text(json.dumps({"defaults": defaults}, indent=2) + "\n")

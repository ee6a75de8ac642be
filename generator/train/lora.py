"""LoRA stage: a low-rank adapter (peft) on an exported model's UNet that teaches it a style its data never had.

The style is a palette (shapes64.PALETTES): the same scenes and captions, with each colour word drawn in another of
the palette's colours ("hue_step": a red circle comes out orange). Only the LoRA's factors train; the model's UNet,
text encoder and VAE stay frozen, so at weight 0 the model is exactly itself. The objective is the UNet stage's (the
model's own noise schedule and prediction type, captions dropped for guidance), on a latent pool of palette-drawn
training scenes.

`save` writes `final/lora.safetensors` in diffusers' LoRA format (`unet.<module>.lora_A/B.weight`), which
`generator.lora.activate`, the service's registry and diffusers' `load_lora_weights` all read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from generator.data import shapes64
from generator.data.shapes64 import caption, palette_prompt
from generator.evaluation.attributes import evaluate
from generator.text import tokenize
from generator.train.data import grid, to_tensor
from generator.train.optim import make_optimizer
from generator.train.unet import LatentPool, draw_timesteps, pool_indices, pool_scenes, sample_prompts


class LoraStage:
    def __init__(self, config, accelerator):
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from diffusers.models.attention_processor import AttnProcessor
        from peft import LoraConfig
        from transformers import CLIPTextModel, CLIPTokenizer

        if config.palette not in shapes64.PALETTES:
            raise ValueError(f"palette must be one of {', '.join(shapes64.PALETTES)}, got {config.palette!r}")
        self.config, self.accelerator = config, accelerator
        model_dir = Path(config.model_dir)
        device = accelerator.device
        self.tokenizer = CLIPTokenizer.from_pretrained(model_dir / "tokenizer")
        # fp32 whatever the saved dtype (the exported model is fp16); all three stay frozen.
        self.text_encoder = CLIPTextModel.from_pretrained(model_dir / "text_encoder", dtype=torch.float32)
        self.vae = AutoencoderKL.from_pretrained(model_dir / "vae", torch_dtype=torch.float32)
        unet = UNet2DConditionModel.from_pretrained(model_dir / "unet", torch_dtype=torch.float32)
        for module in (self.text_encoder, self.vae, unet):
            module.requires_grad_(False).eval().to(device)
        if device.type == "cpu":  # as the UNet stage: plain attention is faster than SDPA's CPU kernel here
            unet.set_attn_processor(AttnProcessor())
        unet.add_adapter(
            LoraConfig(r=config.rank, lora_alpha=config.alpha, init_lora_weights="gaussian",
                       target_modules=list(config.target_modules))
        )
        self.scheduler_config = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())
        self.noise_scheduler = DDPMScheduler.from_config(self.scheduler_config)
        self.generator_defaults = json.loads((model_dir / "generator.json").read_text()).get("defaults", {})

        parameters = [p for p in unet.parameters() if p.requires_grad]  # the LoRA factors only
        optimizer, self.schedule = make_optimizer([{"params": parameters}], config)
        accelerator.register_for_checkpointing(self.schedule)
        self.unet, self.optimizer = accelerator.prepare(unet, optimizer)
        self.prompts = sample_prompts(config.sample_prompts)
        self.pool = self.encode_pool(config.latent_pool)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.unet.parameters() if p.requires_grad]

    @torch.no_grad()
    def encode_pool(self, size: int, chunk: int = 128) -> LatentPool:
        """`size` training scenes drawn in the palette, encoded once by the frozen VAE (scaled posteriors)."""
        scenes = pool_scenes(self.config, size, self.accelerator.process_index)
        scale, means, stds = self.vae.config.scaling_factor, [], []
        for i in range(0, size, chunk):
            pixels = np.stack([np.asarray(shapes64.render(s, self.config.palette)) for s in scenes[i : i + chunk]])
            with self.accelerator.autocast():
                posterior = self.vae.encode(to_tensor(pixels).to(self.accelerator.device)).latent_dist
            means.append(posterior.mean.float().cpu() * scale)
            stds.append(posterior.std.float().cpu() * scale)
        return LatentPool(scenes, torch.cat(means), torch.cat(stds))

    def train_step(self, step: int, rng: np.random.Generator) -> dict:
        config, device = self.config, self.accelerator.device
        indices = pool_indices(step, config.batch_size, len(self.pool.scenes), config.seed)
        captions = [caption(self.pool.scenes[i], rng) for i in indices]
        captions = ["" if rng.random() < config.cond_dropout else text for text in captions]
        generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
        latents = self.pool.draw(indices, generator).to(device)
        with torch.no_grad():
            hidden = self.text_encoder(tokenize(self.tokenizer, captions).to(device))[0]
        noise = torch.randn(latents.shape, generator=generator).to(device)
        timesteps = draw_timesteps(len(latents), self.noise_scheduler.config.num_train_timesteps, 0.0, 0, generator)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        self.unet.train()
        with self.accelerator.autocast():
            prediction = self.unet(noisy, timesteps.to(device), hidden).sample
        loss = F.mse_loss(prediction.float(), target.float())
        self.accelerator.backward(loss)
        if config.grad_clip:
            self.accelerator.clip_grad_norm_(self.trainable_parameters(), config.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.item(), "lr": self.schedule.get_last_lr()[0]}

    def model(self):
        """The adapted model as a `LoadedModel` (the LoRA active), for sampling."""
        from generator.loading import LoadedModel
        from generator.model_info import ModelDefaults

        defaults = ModelDefaults(width=shapes64.CANVAS, height=shapes64.CANVAS, steps=20, guidance_scale=2.5,
                                 scheduler="ddim")
        defaults = ModelDefaults(**{**vars(defaults), **self.generator_defaults})
        return LoadedModel(
            name="lora-training", path=Path(self.config.model_dir), content_hash="", tokenizer=self.tokenizer,
            text_encoder=self.text_encoder, unet=self.accelerator.unwrap_model(self.unet).eval(), vae=self.vae,
            scheduler_config=self.scheduler_config, device=self.accelerator.device, dtype=torch.float32,
            defaults=defaults,
        )

    @torch.no_grad()
    def sample(self, path: Path) -> dict:
        """A sheet of the sample prompts (seed 0): `style_accuracy` judges each image against the prompt as the
        palette draws it (a red circle should look orange), `plain_accuracy` against the prompt as written."""
        from generator.pipeline import GenerationRequest, generate

        results = generate(self.model(), [GenerationRequest(prompt=prompt, seed=0) for prompt in self.prompts])
        images = np.stack([np.asarray(result.images[0].image) for result in results])
        grid(images, columns=min(len(images), 8)).save(path)
        styled = [palette_prompt(prompt, self.config.palette) for prompt in self.prompts]
        return {
            "style_accuracy": evaluate(zip(images, styled, strict=True)).overall,
            "plain_accuracy": evaluate(zip(images, self.prompts, strict=True)).overall,
        }

    @torch.no_grad()
    def save(self, out: Path) -> None:
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        unet = self.accelerator.unwrap_model(self.unet)
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        # The file holds no alpha, so readers take alpha = rank (scale 1): the up factors carry alpha / rank instead.
        scale = self.config.alpha / self.config.rank
        layers = {
            name: (tensor * scale if ("lora_B" in name or "lora.up" in name) else tensor).to(torch.float16)
            for name, tensor in layers.items()
        }
        out.mkdir(parents=True, exist_ok=True)
        StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=layers, weight_name="lora.safetensors")
        if self.config.export_path:
            Path(self.config.export_path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / "lora.safetensors", self.config.export_path)

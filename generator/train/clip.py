"""CLIP stage: a small text tower and image tower trained contrastively on shapes64 caption–image pairs.

The text tower becomes the built-in model's text encoder; the image tower gives the VAE its
perceptual loss and the evaluation its image features and CLIP score. Pixels go in as [-1, 1]
(no ImageNet normalisation: nothing here was trained on ImageNet).

Contrastive learning alone lets the text tower drop the position and relation words: in a batch,
colour, shape, size and background nearly always tell the right image apart already (MODEL_CARD.md,
experiment 2). With `attribute_weight` > 0 the stage adds a caption-only loss: one linear head per
attribute on the pooled text output must tell what the caption says (`AttributeHeads`), with the
caption's own words as labels and the parts it leaves out ignored (attribute_heads.py).

The tokenizer and the embedding helpers are in `generator.text`; the validation pairs in train/data.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from generator.data import shapes64
from generator.evaluation.text_probe import sensitivity
from generator.text import image_embeddings, make_tokenizer, text_embeddings, tokenize
from generator.train.attribute_heads import (
    ATTRIBUTES,
    HEAD_LR_SCALE,
    LAYOUT_ATTRIBUTES,
    AttributeHeads,
    attribute_labels,
)
from generator.train.data import grid, to_tensor, training_batch, validation_pairs
from generator.train.optim import make_optimizer


def make_clip(config, tokenizer):
    from transformers import CLIPConfig, CLIPModel

    tower = {
        "hidden_size": config.hidden_size,
        "intermediate_size": 4 * config.hidden_size,
        "num_hidden_layers": config.layers,
        "num_attention_heads": config.heads,
        "hidden_act": "quick_gelu",
    }
    text = {
        **tower,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": config.max_tokens,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {**tower, "image_size": shapes64.CANVAS, "patch_size": config.patch_size, "num_channels": 3}
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=config.projection_dim))


def load_clip(folder: Path):
    """(CLIPModel in fp32, tokenizer) saved by `save_clip` or found in an exported model folder."""
    from transformers import CLIPModel, CLIPTokenizer

    return CLIPModel.from_pretrained(folder / "clip", dtype=torch.float32), CLIPTokenizer.from_pretrained(
        folder / "tokenizer"
    )


class ClipStage:
    def __init__(self, config, accelerator):
        self.config, self.accelerator = config, accelerator
        if config.init_from:  # go on from a trained CLIP; its tokenizer and tower sizes then apply
            model, self.tokenizer = load_clip(Path(config.init_from))
        else:
            self.tokenizer = make_tokenizer(config.max_tokens, config.tokenizer_merges)
            model = make_clip(config, self.tokenizer)
        self.attributes = ATTRIBUTES | LAYOUT_ATTRIBUTES if config.layout_heads else ATTRIBUTES
        heads = AttributeHeads(model.config.text_config.hidden_size, self.attributes)
        groups = [{"params": list(model.parameters()), "lr": config.learning_rate}]
        if config.attribute_weight:  # new linear heads on layer-normed features learn slowly at the towers' rate
            groups.append({"params": list(heads.parameters()), "lr": HEAD_LR_SCALE * config.learning_rate})
        optimizer, schedule = make_optimizer(groups, config)
        self.model, self.heads, self.optimizer = accelerator.prepare(model, heads, optimizer)
        self.schedule = schedule
        accelerator.register_for_checkpointing(schedule)
        self.validation = validation_pairs(256)

    def train_step(self, step: int, rng: np.random.Generator) -> dict:
        images, captions = training_batch(
            rng, self.config.batch_size, self.config.data_seed, hard_negatives=self.config.hard_negatives
        )
        device = self.accelerator.device
        self.model.train()
        input_ids = tokenize(self.tokenizer, captions)
        output = self.model(input_ids=input_ids.to(device), pixel_values=images.to(device), return_loss=True)
        loss, logs = output.loss, {"contrastive": output.loss.item()}
        if self.config.attribute_weight:
            # The end token and every padding token after it (the same id) have seen the whole caption, and the
            # UNet's cross-attention reads them all: each must tell the caption's attributes.
            ids = input_ids.to(device)
            after_end = (ids == self.tokenizer.eos_token_id).cumsum(1) > 0
            labels = attribute_labels(captions, self.attributes).to(device)[:, None, :].expand(-1, ids.shape[1], -1)
            hidden = output.text_model_output.last_hidden_state
            attribute_loss, accuracy = self.heads(hidden[after_end], labels[after_end])
            loss = loss + self.config.attribute_weight * attribute_loss
            logs["attribute_loss"] = attribute_loss.item()
            logs.update({f"{k}_acc": a.item() for k, a in zip(self.attributes, accuracy)
                         if k in ("cell", "relation", "lead_colour", "trail_colour")})
        self.accelerator.backward(loss)
        if self.config.grad_clip:
            parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
            self.accelerator.clip_grad_norm_(parameters, self.config.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.item(), **logs, "lr": self.schedule.get_last_lr()[0]}

    @torch.no_grad()
    def retrieval(self) -> tuple[dict, np.ndarray]:
        """Top-1 retrieval accuracy among the validation pairs, both ways, and the text → image ranking."""
        model = self.accelerator.unwrap_model(self.model).eval()
        images, captions = self.validation
        pixels = to_tensor(images).to(self.accelerator.device)
        image_embeds = image_embeddings(model, pixels)
        text_embeds = text_embeddings(model, tokenize(self.tokenizer, captions).to(pixels.device))
        similarity = text_embeds @ image_embeds.T  # (texts, images)
        target = torch.arange(len(captions), device=similarity.device)
        # Captions can repeat among validation images: an image with the same caption counts as a hit.
        same = torch.tensor([[a == b for b in captions] for a in captions], device=similarity.device)
        text_hit = same[target, similarity.argmax(1)].float().mean().item()
        image_hit = same[similarity.argmax(0), target].float().mean().item()
        return {"text_to_image_top1": text_hit, "image_to_text_top1": image_hit}, similarity.argsort(1, True).cpu()

    def sample(self, path: Path) -> dict:
        """A retrieval sheet: each row is a validation image, then the 5 images its caption ranks first."""
        metrics, ranking = self.retrieval()
        images, _ = self.validation
        rows = [np.concatenate([images[i : i + 1], images[ranking[i, :5].numpy()]]) for i in range(8)]
        grid(np.concatenate(rows), columns=6).save(path)
        # How much the hidden states move when the cell or relation words change (evaluation/text_probe.py).
        model = self.accelerator.unwrap_model(self.model)
        changes = sensitivity(self.tokenizer, model.text_model, count=100, edits=("colour", "cell", "relation"))
        return {**metrics, **{f"probe_{k}": v for k, v in changes.items()}}

    def save(self, out: Path) -> None:
        save_clip(self.accelerator.unwrap_model(self.model), self.tokenizer, out)


def save_clip(model, tokenizer, out: Path) -> None:
    """`out/clip` (both towers and projections), `out/text_encoder` (the text tower alone), `out/tokenizer`."""
    from transformers import CLIPTextModel

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out / "clip")
    text_encoder = CLIPTextModel(model.config.text_config)
    text_encoder.load_state_dict(model.text_model.state_dict())
    text_encoder.save_pretrained(out / "text_encoder")
    tokenizer.save_pretrained(out / "tokenizer")

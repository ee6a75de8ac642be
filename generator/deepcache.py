"""Feature caching across denoising steps, in the spirit of DeepCache (Ma et al. 2024, "DeepCache: Accelerating
Diffusion Models for Free").

Between two neighbouring steps the UNet's deep features change little, while its shallowest blocks, fed straight
from the input through the skip connections, carry what does change. So a *full* step runs the whole UNet and
keeps the features that enter its last up block, and the *shallow* steps after it run only what touches the
full resolution: the time embedding, `conv_in`, the first down block, the last up block (on the kept features and
this step's skips) and the output head. `request.deep_cache_interval` = k makes every k-th step full (1: every step,
the exact loop).

    out, features = unet_full(unet, x, t, context)                # a full step; keep `features`
    out = unet_shallow(unet, x, t, context, features)             # the next k - 1 steps

Both follow `UNet2DConditionModel.forward` line for line for what SD-family UNets use (time, class and added
embeddings, cross-attention; SDXL's pooled embeds and time ids come in as `added_cond_kwargs`); `unet_full`'s output
equals `unet(...)`'s. ControlNet residuals, attention masks and
GLIGEN are not supported here.
"""

from __future__ import annotations

import torch


def _embedding(unet, sample, timestep, encoder_hidden_states, timestep_cond, added_cond_kwargs):
    """The time (+ class, + added) embedding and the processed text context, as UNet2DConditionModel.forward."""
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), timestep_cond)
    class_emb = unet.get_class_embed(sample=sample, class_labels=None)
    if class_emb is not None:
        emb = torch.cat([emb, class_emb], dim=-1) if unet.config.class_embeddings_concat else emb + class_emb
    aug_emb = unet.get_aug_embed(
        emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs or {}
    )
    if aug_emb is not None:
        emb = emb + aug_emb
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    context = unet.process_encoder_hidden_states(
        encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs or {}
    )
    return sample, emb, context


def _down(block, sample, emb, context):
    if getattr(block, "has_cross_attention", False):
        return block(hidden_states=sample, temb=emb, encoder_hidden_states=context)
    return block(hidden_states=sample, temb=emb)


def _up(block, sample, emb, context, skips, upsample_size=None):
    if getattr(block, "has_cross_attention", False):
        return block(
            hidden_states=sample, temb=emb, res_hidden_states_tuple=skips, encoder_hidden_states=context,
            upsample_size=upsample_size,
        )
    return block(hidden_states=sample, temb=emb, res_hidden_states_tuple=skips, upsample_size=upsample_size)


def _head(unet, sample):
    if unet.conv_norm_out is not None:
        sample = unet.conv_act(unet.conv_norm_out(sample))
    return unet.conv_out(sample)


def unet_full(
    unet, sample, timestep, encoder_hidden_states, *, timestep_cond=None, added_cond_kwargs=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole UNet: (output, the features entering the last up block) for the shallow steps that follow."""
    check_supported(unet)
    factor = 2 ** unet.num_upsamplers
    forward_upsample_size = any(dim % factor for dim in sample.shape[-2:])
    sample, emb, context = _embedding(unet, sample, timestep, encoder_hidden_states, timestep_cond, added_cond_kwargs)
    sample = unet.conv_in(sample)
    skips = (sample,)
    for block in unet.down_blocks:
        sample, res = _down(block, sample, emb, context)
        skips += res
    if unet.mid_block is not None:
        if getattr(unet.mid_block, "has_cross_attention", False):
            sample = unet.mid_block(sample, emb, encoder_hidden_states=context)
        else:
            sample = unet.mid_block(sample, emb)
    features = None
    for i, block in enumerate(unet.up_blocks):
        last = i == len(unet.up_blocks) - 1
        res, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
        if last:
            features = sample
        upsample_size = skips[-1].shape[2:] if not last and forward_upsample_size else None
        sample = _up(block, sample, emb, context, res, upsample_size)
    return _head(unet, sample), features


def unet_shallow(
    unet, sample, timestep, encoder_hidden_states, features, *, timestep_cond=None, added_cond_kwargs=None
) -> torch.Tensor:
    """The UNet's shallow path on `features` kept by an earlier `unet_full`: its output for this step's input.

    `features` may hold more rows than `sample` (a full step under guidance, shallow ones after the guidance
    cut-off): the last rows, the prompts' half, are used.
    """
    check_supported(unet)
    if features.shape[0] != sample.shape[0]:
        features = features[-sample.shape[0] :]
    sample, emb, context = _embedding(unet, sample, timestep, encoder_hidden_states, timestep_cond, added_cond_kwargs)
    sample = unet.conv_in(sample)
    _, res = _down(unet.down_blocks[0], sample, emb, context)
    skips = (sample, *res)
    last = unet.up_blocks[-1]
    sample = _up(last, features, emb, context, skips[: len(last.resnets)])
    return _head(unet, sample)


def check_supported(unet) -> None:
    """Raise ValueError where the shallow path would not see the skips the full UNet gives its last up block."""
    first, last = unet.down_blocks[0], unet.up_blocks[-1]
    if len(last.resnets) > 1 + len(first.resnets) + (1 if first.downsamplers else 0):
        raise ValueError("deep_cache_interval > 1 needs a UNet whose last up block reads only its first down block")
    if unet.config.addition_embed_type == "image_hint":
        raise ValueError("deep_cache_interval > 1 does not support image-hint UNets")


class FullUNet(torch.nn.Module):
    """`unet_full` as a module, for torch.compile."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None, timestep_cond=None):
        return unet_full(self.unet, sample, timestep, encoder_hidden_states, timestep_cond=timestep_cond,
                         added_cond_kwargs=added_inputs(text_embeds, time_ids))


class ShallowUNet(torch.nn.Module):
    """`unet_shallow` as a module, for torch.compile."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, features, text_embeds=None, time_ids=None,
                timestep_cond=None):
        return unet_shallow(self.unet, sample, timestep, encoder_hidden_states, features, timestep_cond=timestep_cond,
                            added_cond_kwargs=added_inputs(text_embeds, time_ids))


def added_inputs(text_embeds, time_ids) -> dict | None:
    """SDXL's `added_cond_kwargs` from the two tensors a compiled graph takes positionally; None for SD 1.x."""
    return None if text_embeds is None else {"text_embeds": text_embeds, "time_ids": time_ids}

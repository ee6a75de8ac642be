"""Training the built-in model's three parts on shapes64: `python -m generator.train --config configs/….yaml`.

Stages, in order: `clip` (text and image towers, contrastive), `vae` (AutoencoderKL), `unet`
(UNet2DConditionModel on the VAE's latents, conditioned on the CLIP text tower). Each writes
`output_dir/final`; the UNet stage's `final` is a complete diffusers-layout model folder.
"""

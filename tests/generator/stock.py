"""The modules of a loaded model as diffusers' stock pipelines take them, for the parity tests."""

from generator import make_scheduler


def stock_components(model, scheduler_name: str) -> dict:
    """Keyword arguments for `StableDiffusion*Pipeline(...)` on `model`'s own modules, with a fresh scheduler."""
    return dict(
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=make_scheduler(scheduler_name, model.scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )

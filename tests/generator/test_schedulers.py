"""Every scheduler at several step counts: it makes a finite image, or it is refused before any step runs.

`generator.scheduler_names.scheduler_error` is the torch-free verdict the API gives
(tests/api/test_scheduler_refusals.py); these tests hold it to what the library really does, on a zero-terminal-SNR
model (the built-in one) and on an ordinary one (the tiny model).
"""

import inspect
from pathlib import Path

import pytest
import torch

from generator import GenerationRequest, generate_one, load_model
from generator.scheduler_names import LCM_ORIGINAL_STEPS, SCHEDULERS, ZERO_SNR_CLASSES, scheduler_error

BUILTIN = Path(__file__).resolve().parents[2] / "models" / "shapes64"
STEP_COUNTS = (1, 2, 3, 7, 20)


def test_the_zero_snr_table_agrees_with_diffusers():
    import diffusers

    for class_name, _ in SCHEDULERS.values():
        parameters = inspect.signature(getattr(diffusers, class_name).__init__).parameters
        assert (class_name in ZERO_SNR_CLASSES) == ("rescale_betas_zero_snr" in parameters), class_name
    lcm = inspect.signature(diffusers.LCMScheduler.__init__).parameters
    assert lcm["original_inference_steps"].default == LCM_ORIGINAL_STEPS


def test_the_builtin_model_refuses_karras_sigmas_and_pndm_with_the_reason():
    import json

    config = json.loads((BUILTIN / "scheduler" / "scheduler_config.json").read_text())
    assert "zero-terminal-SNR" in scheduler_error("dpmpp_2m_karras", 20, config)
    assert "zero-terminal-SNR" in scheduler_error("pndm", None, config)
    assert scheduler_error("dpmpp_2m", 20, config) is None
    assert scheduler_error("lcm", 51, config) == "scheduler 'lcm' cannot run 51 steps: it runs at most 50 steps"
    assert scheduler_error("lcm", 50, config) is None


def run_or_refuse(model, scheduler: str, steps: int, size: int) -> None:
    """The library's verdict must be scheduler_error's: a finite image, or that ValueError before any step."""
    expected = scheduler_error(scheduler, steps, model.scheduler_config)
    seen = []  # (step, total, latents) after each step

    def callback(state):
        seen.append((state.step, state.total, state.latents))

    request = GenerationRequest(
        prompt="a red circle", scheduler=scheduler, steps=steps, width=size, height=size, seed=1
    )
    if expected is not None:
        with pytest.raises(ValueError) as error:
            generate_one(model, request, callback=callback)
        assert expected in str(error.value)
        assert seen == [], "refused only after steps had run"
        return
    result = generate_one(model, request, callback=callback)
    step, total, latents = seen[-1]
    assert step == total >= steps  # every timestep ran (pndm's PLMS adds a warm-up one)
    assert torch.isfinite(latents).all()  # the final latents, which are decoded
    assert result.images[0].image.size == (size, size)


@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_every_scheduler_on_the_tiny_model(tiny_model, scheduler, steps):
    run_or_refuse(tiny_model, scheduler, steps, size=32)


def test_lcm_past_its_original_steps_is_refused_with_the_apis_message(tiny_model):
    run_or_refuse(tiny_model, "lcm", LCM_ORIGINAL_STEPS + 1, size=32)


@pytest.fixture(scope="module")
def builtin_model():
    return load_model(BUILTIN, device="cpu", dtype="fp32", name="shapes64")


@pytest.mark.slow
@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_every_scheduler_on_the_builtin_model(builtin_model, scheduler, steps):
    run_or_refuse(builtin_model, scheduler, steps, size=64)

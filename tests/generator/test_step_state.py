"""What the per-step callback carries: the step's model input, guided prediction and x̂0, and the prompt hook."""

import numpy as np
import pytest
import torch

from generator import SCHEDULERS, GenerationRequest, generate, generate_one
from generator.pipeline import encode_prompts, predict_original


def pixels(result):
    return np.asarray(result.images[0].image, dtype=np.int16)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_step_carries_input_prediction_and_denoised_and_output_is_unchanged(tiny_model, name):
    request = GenerationRequest("a red circle", steps=3, scheduler=name, seed=2, num_images=2, guidance_scale=3.0)
    states = []
    with_callback = generate_one(tiny_model, request, callback=states.append)
    assert [s.step for s in states] == list(range(1, states[0].total + 1))  # PNDM adds a step
    for state in states:
        assert state.noise_pred.shape == state.latents.shape == state.model_input.shape == state.denoised.shape
        assert state.denoised.dtype == torch.float32 and torch.isfinite(state.denoised).all()
    without = generate_one(tiny_model, request)
    assert with_callback.images[0].png == without.images[0].png


def test_ddim_denoised_is_x0_from_the_steps_input_and_prediction(tiny_model):
    request = GenerationRequest("a red circle", steps=4, scheduler="ddim", seed=3, guidance_scale=1.0)
    states = []
    generate_one(tiny_model, request, callback=states.append)
    config = tiny_model.scheduler_config
    from generator.schedulers import make_scheduler

    alphas = make_scheduler("ddim", config).alphas_cumprod
    for state in states:
        alpha_bar = float(alphas[state.timestep])
        prediction_type = config.get("prediction_type", "epsilon")
        expected = predict_original(state.model_input, state.noise_pred, alpha_bar, prediction_type)
        torch.testing.assert_close(state.denoised, expected, rtol=1e-4, atol=1e-4)


def test_callback_can_condition_the_following_steps_on_other_prompts(tiny_model):
    base = GenerationRequest("a red circle", steps=3, scheduler="ddim", seed=4, guidance_scale=4.0)
    other = GenerationRequest("a blue square on a black background", steps=3, scheduler="ddim", seed=4,
                              guidance_scale=4.0)
    other_embeds = encode_prompts([other.prompt], tiny_model)

    def swap_after(step):
        def callback(state):
            if state.step == step:
                state.prompt_embeds = other_embeds
        return callback

    plain, target = generate_one(tiny_model, base), generate_one(tiny_model, other)
    assert np.array_equal(pixels(generate_one(tiny_model, base, callback=swap_after(3))), pixels(plain))
    swapped = pixels(generate_one(tiny_model, base, callback=swap_after(1)))
    assert not np.array_equal(swapped, pixels(plain)) and not np.array_equal(swapped, pixels(target))


def test_replacement_embeddings_must_keep_their_shape(tiny_model):
    def callback(state):
        state.prompt_embeds = state.prompt_embeds[:, :3]

    with pytest.raises(ValueError, match="shape"):
        generate(tiny_model, [GenerationRequest("a red circle", steps=2, seed=1)], callback=callback)

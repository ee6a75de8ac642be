"""At which sampling step does a model decide which object goes where? For validation relation prompts
`A <relation> B`, the first k of the default 20 DDIM steps are conditioned on the swapped prompt `B <relation> A`
and the rest on the true one; the attribute evaluator then says which of the two prompts each image matches.
While the true prompt still wins after k swapped steps, the layout was not yet decided by then.

    python -m experiments.layout_lock [MODEL_DIR] [PROMPTS]    # default models/shapes64, 16 prompts × 4 images
"""

from __future__ import annotations

import re
import sys

import torch

from generator.data import shapes64
from generator.evaluation.attributes import check
from generator.loading import load_model
from generator.pipeline import _encode, decode_latents
from generator.schedulers import make_scheduler

RELATION = re.compile(r"^(an? \w+ \w+) (to the right of|to the left of|above|below) (an? \w+ \w+)( on .*)$")
IMAGES_PER_PROMPT = 4
STEPS = 20
GUIDANCE = 2.5


def swapped(prompt: str) -> str:
    first, relation, second, background = RELATION.match(prompt).groups()
    return f"{second} {relation} {first}{background}"


@torch.no_grad()
def sample(model, early: torch.Tensor, late: torch.Tensor, swap_steps: int) -> list:
    """DDIM with classifier-free guidance, conditioned on `early` for the first `swap_steps` steps."""
    unconditional = _encode([""] * len(early), model)
    scheduler = make_scheduler("ddim", model.scheduler_config)
    scheduler.set_timesteps(STEPS)
    side = shapes64.CANVAS // model.vae_scale_factor
    latents = torch.cat([
        torch.randn((1, model.unet.config.in_channels, side, side), generator=torch.Generator().manual_seed(i))
        for i in range(len(early))
    ]) * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        condition = early if i < swap_steps else late
        model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t).to(model.dtype)
        prediction = model.unet(model_input, t, encoder_hidden_states=torch.cat([unconditional, condition]),
                                return_dict=False)[0].float()
        uncond, cond = prediction.chunk(2)
        latents = scheduler.step(uncond + GUIDANCE * (cond - uncond), t, latents, return_dict=False)[0]
    return list(decode_latents(model, latents))


def main() -> None:
    folder = sys.argv[1] if len(sys.argv) > 1 else "models/shapes64"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    torch.set_num_threads(1)
    model = load_model(folder)
    cases = shapes64.validation_prompt_sets(seed=0, count=count)["relation"]
    true = [case.prompt for case in cases for _ in range(IMAGES_PER_PROMPT)]
    swap = [swapped(prompt) for prompt in true]
    true_embeds, swap_embeds = _encode(true, model), _encode(swap, model)
    timesteps = make_scheduler("ddim", model.scheduler_config)
    timesteps.set_timesteps(STEPS)
    print(f"{folder}: {len(true)} images, DDIM {STEPS} steps, guidance {GUIDANCE}")
    print("swapped steps | swapped prompt for t >= | true prompt right | swapped prompt right")
    for k in (0, 1, 2, 3, 4, 6, 8, STEPS):
        images = sample(model, swap_embeds, true_embeds, k)
        right_true = sum(check(image, prompt).correct for image, prompt in zip(images, true, strict=True))
        right_swap = sum(check(image, prompt).correct for image, prompt in zip(images, swap, strict=True))
        since = "-" if k == 0 else int(timesteps.timesteps[k - 1])
        print(f"{k:13d} | {since!s:>23} | {right_true:>10d} / {len(true)} | {right_swap:>13d} / {len(true)}")


if __name__ == "__main__":
    main()

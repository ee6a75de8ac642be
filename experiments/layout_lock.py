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
from generator.pipeline import GenerationRequest, StepState, encode_prompts, generate
from generator.schedulers import make_scheduler

RELATION = re.compile(r"^(an? \w+ \w+) (to the right of|to the left of|above|below) (an? \w+ \w+)( on .*)$")
IMAGES_PER_PROMPT = 4
STEPS = 20
GUIDANCE = 2.5


def swapped(prompt: str) -> str:
    first, relation, second, background = RELATION.match(prompt).groups()
    return f"{second} {relation} {first}{background}"


def sample(model, early: list[str], late: list[str], swap_steps: int) -> list:
    """`generate` (DDIM, classifier-free guidance), conditioned on the prompts `early` for the first `swap_steps`
    steps and on `late` after: the step callback hands the loop `late`'s embeddings after step `swap_steps`.
    Prompt p's images have seeds IMAGES_PER_PROMPT p, …: image i of the batch has seed i."""
    prompts = early if swap_steps > 0 else late
    requests = [
        GenerationRequest(prompt, width=shapes64.CANVAS, height=shapes64.CANVAS, steps=STEPS, guidance_scale=GUIDANCE,
                          scheduler="ddim", seed=IMAGES_PER_PROMPT * p, num_images=IMAGES_PER_PROMPT)
        for p, prompt in enumerate(prompts[::IMAGES_PER_PROMPT])
    ]
    late_embeds = encode_prompts(late, model)

    def swap_back(state: StepState) -> None:
        if state.step == swap_steps:
            state.prompt_embeds = late_embeds

    results = generate(model, requests, callback=swap_back)
    return [image.image for result in results for image in result.images]


def main() -> None:
    folder = sys.argv[1] if len(sys.argv) > 1 else "models/shapes64"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    torch.set_num_threads(1)
    model = load_model(folder)
    cases = shapes64.validation_prompt_sets(seed=0, count=count)["relation"]
    true = [case.prompt for case in cases for _ in range(IMAGES_PER_PROMPT)]
    swap = [swapped(prompt) for prompt in true]
    timesteps = make_scheduler("ddim", model.scheduler_config)
    timesteps.set_timesteps(STEPS)
    print(f"{folder}: {len(true)} images, DDIM {STEPS} steps, guidance {GUIDANCE}")
    print("swapped steps | swapped prompt for t >= | true prompt right | swapped prompt right")
    for k in (0, 1, 2, 3, 4, 6, 8, STEPS):
        images = sample(model, swap, true, k)
        right_true = sum(check(image, prompt).correct for image, prompt in zip(images, true, strict=True))
        right_swap = sum(check(image, prompt).correct for image, prompt in zip(images, swap, strict=True))
        since = "-" if k == 0 else int(timesteps.timesteps[k - 1])
        print(f"{k:13d} | {since!s:>23} | {right_true:>10d} / {len(true)} | {right_swap:>13d} / {len(true)}")


if __name__ == "__main__":
    main()

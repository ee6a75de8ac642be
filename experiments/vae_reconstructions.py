"""Which validation images does a VAE lose? Reconstructs 512 validation images (posterior mode) and prints the
attribute evaluator's accuracy over all of them and over the single-object ones, with the single-object failures
counted by size, background and failed attribute.

    python -m experiments.vae_reconstructions [VAE_DIR]     # default models/shapes64/vae
"""

from __future__ import annotations

import sys
from collections import Counter

import numpy as np
import torch

from generator.evaluation.attributes import accuracy, check
from generator.train.data import to_tensor, to_uint8, validation_pairs


def main() -> None:
    from diffusers import AutoencoderKL

    folder = sys.argv[1] if len(sys.argv) > 1 else "models/shapes64/vae"
    vae = AutoencoderKL.from_pretrained(folder, torch_dtype=torch.float32).eval()
    images, captions = validation_pairs(512)
    with torch.no_grad():
        reconstructions = np.concatenate([
            to_uint8(vae.decode(vae.encode(to_tensor(images[i : i + 64])).latent_dist.mode()).sample)
            for i in range(0, len(images), 64)
        ])
    verdicts = [check(image, caption) for image, caption in zip(reconstructions, captions, strict=True)]
    single = [verdict for verdict in verdicts if len(verdict.matched) == 1]
    print("all   ", accuracy(verdicts).format())
    print("single", accuracy(single).format())
    failures = Counter()
    for verdict in single:
        if not verdict.correct:
            failed = tuple(name for name, ok in verdict.checks.items() if not ok)
            failures[(verdict.prompt.split()[1], verdict.prompt.split(" on a ")[-1], failed)] += 1
    for (size, background, failed), count in failures.most_common():
        print(f"{count:4d}  {size} on {background}: {', '.join(failed)} wrong")


if __name__ == "__main__":
    main()

"""Which validation images does a VAE lose? Reconstructs 512 validation images (posterior mode) and prints the
attribute evaluator's accuracy over all of them and over the single-object ones, with the single-object failures
counted by size, background and failed attribute.

    python benchmarks/vae_reconstructions.py [VAE_DIR]     # default models/shapes64/vae
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generator.evaluation.attributes import check, evaluate  # noqa: E402
from generator.train.clip import validation_pairs  # noqa: E402
from generator.train.data import to_tensor, to_uint8  # noqa: E402


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
    print("all   ", evaluate(zip(reconstructions, captions, strict=True)).format())
    single = [(r, c) for r, c in zip(reconstructions, captions, strict=True) if len(check(r, c).matched) == 1]
    print("single", evaluate(single).format())
    failures = Counter()
    for reconstruction, caption in single:
        verdict = check(reconstruction, caption)
        if not verdict.correct:
            failed = tuple(name for name, ok in verdict.checks.items() if not ok)
            failures[(caption.split()[1], caption.split(" on a ")[-1], failed)] += 1
    for (size, background, failed), count in failures.most_common():
        print(f"{count:4d}  {size} on {background}: {', '.join(failed)} wrong")


if __name__ == "__main__":
    main()

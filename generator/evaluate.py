"""Evaluate a model on shapes64: FID, KID, Inception Score, CLIP score and attribute accuracy, each beside a real
reference, and the generation speed.

`python -m generator.evaluate --model DIR --out REPORT_DIR [--prompts 64] [--images-per-prompt 4]
[--scheduler S] [--steps N] [--guidance G] [--batch 32]` writes to REPORT_DIR:

- `report.json`: every number, the settings, the model's content hash and the command line;
- `report.md`: the same as tables: metric | model | real-vs-real noise floor, accuracy per prompt set and
  per attribute, the two-object prompts by relation word, the held-out prompts by colour–shape pair (and what
  was drawn instead), seconds per image;
- `grid_single.png`, `grid_held_out.png`, `grid_relation.png`: generated images with their prompts.

What is measured:
1. Prompts: `validation_prompt_sets(seed=prompt_seed, count=prompts)` (`--prompt-seed`, 0 by default: the
   reported figures; tune sampling settings on another seed), the sets `single`, `held_out` and
   `relation`; prompt i of a set gets `images_per_prompt` images with seeds 1000 i, 1000 i + 1, …, at
   64 × 64 and the model's steps, guidance and scheduler unless overridden. Requests go through
   `generate` in batches of about `--batch` images; the wall clock of generation alone, divided by the
   number of images, is the speed.
2. Real reference sets: real set A holds the rendered scenes of `validation_prompt_sets(seed=s)` for
   s = 100, 101, … until it has as many images as were generated (same prompt-set mixture); real set B
   the same from s = 200, 201, …: an independent draw of the same distribution, so B vs A is the noise
   floor of a distance measured on this many images.
3. Features: the image tower of the model's `clip/` folder (the CLIP stage, trained on shapes64) gives
   FID and KID (generated vs A; floor B vs A) and, with its text tower, the CLIP score (generated
   images vs their prompts; real A vs its prompts). A model without `clip/` skips these, with a note.
   Inception pool features are used only when `--inception-weights` names a local weight file (a
   torchvision `inception_v3` state dict or pytorch-fid's `pt_inception-*.pth`, with torchvision,
   and pytorch-fid for the latter, installed); nothing is ever downloaded.
4. Inception Score: from the colour × shape probabilities (18 classes) of a small classifier trained
   on shapes64 (`generator.evaluation.classifier`), over the one-object sets (`single`, `held_out`);
   real A's one-object images give the reference.
5. Attribute accuracy per prompt set, overall and per attribute (`generator.evaluation.attributes`),
   for the generated images and, as a check of the checker, for real A.

This module is the command line; the pieces live in `generator.evaluation`: `image_sets` (generated and
real sets), `features` (CLIP and Inception features), `report` (the measurements, report.md and grids).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from generator.data.shapes64 import PromptCase, validation_prompt_sets
from generator.evaluation.features import INCEPTION_OPTION, ClipFeatures, InceptionFeatures
from generator.evaluation.image_sets import (
    IMAGE_SEED_STRIDE,
    PROMPT_SEED,
    generate_images,
    real_sets,
    resolve_sampling,
)
from generator.evaluation.report import (
    FORMAT,
    attribute_accuracy,
    distribution_metrics,
    finite_tree,
    held_out_breakdown,
    relation_breakdown,
    verdicts_of,
    write_report,
)
from generator.limits import MAX_IMAGES_PER_REQUEST
from generator.loading import LoadedModel
from generator.schedulers import SCHEDULERS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m generator.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a diffusers-layout model folder")
    parser.add_argument("--out", type=Path, required=True, help="the report folder")
    parser.add_argument("--prompts", type=int, default=64, help="prompts per prompt set (default 64)")
    parser.add_argument("--images-per-prompt", type=int, default=4)
    parser.add_argument(
        "--prompt-seed", type=int, default=PROMPT_SEED,
        help=f"seed of the validation prompt sets (default {PROMPT_SEED}: the reported figures; tune on another)",
    )
    parser.add_argument("--scheduler", choices=list(SCHEDULERS), help="default: the model's")
    parser.add_argument("--steps", type=int, help="default: the model's")
    parser.add_argument("--guidance", type=float, help="default: the model's")
    parser.add_argument("--batch", type=int, default=32, help="images per generate call (default 32)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, … (default: cuda when present)")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument(
        INCEPTION_OPTION, type=Path, help="local Inception v3 weights for FID on Inception features (optional)"
    )
    parser.add_argument(
        "--classifier",
        type=Path,
        default=None,
        help="the IS classifier's file (default var/eval/classifier.safetensors; trained there once if missing)",
    )
    return parser


def check_counts(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.prompts < 1:
        parser.error("--prompts must be at least 1")
    if not 1 <= args.images_per_prompt <= MAX_IMAGES_PER_REQUEST:
        parser.error(f"--images-per-prompt must be from 1 to {MAX_IMAGES_PER_REQUEST}")
    if args.batch < 1:
        parser.error("--batch must be at least 1")


def load_for_evaluation(args: argparse.Namespace) -> tuple[LoadedModel, dict[str, list[PromptCase]]]:
    """The model (`--model`, `--device`, `--dtype`) and its validation prompt sets (`--prompt-seed`, `--prompts`);
    raises ModelLoadError or ValueError."""
    from generator.loading import load_model

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    return model, validation_prompt_sets(seed=args.prompt_seed, count=args.prompts)


def main(argv: list[str] | None = None) -> int:
    from generator.evaluation.classifier import DEFAULT_PATH, cached_classifier, read_classifier_info
    from generator.model_info import ModelLoadError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    check_counts(parser, args)

    def log(message: str) -> None:
        print(message, flush=True)

    # 1. Load the model and resolve the sampling settings
    try:
        model, prompt_sets = load_for_evaluation(args)
        sampling = resolve_sampling(model, scheduler=args.scheduler, steps=args.steps, guidance=args.guidance)
    except (ModelLoadError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    # 2. Feature extractors and the classifier, before the long part: what is missing shows at once
    notes = []
    clip, clip_note = ClipFeatures.try_for_model(model, skipped="FID, KID and CLIP score")
    notes.append(clip_note)
    inception, inception_note = InceptionFeatures.from_path(args.inception_weights)
    notes.append(f"Inception FID: {inception_note}")
    classifier_path = args.classifier or DEFAULT_PATH
    if not classifier_path.is_file():
        log(f"training the Inception Score classifier once, into {classifier_path} (about a minute)")
    classifier = cached_classifier(classifier_path)

    # 3. Generate
    generated, seconds = generate_images(
        model, prompt_sets, args.images_per_prompt, sampling, batch=args.batch, log=log
    )
    count = len(generated)

    # 4. Real reference sets: A the reference, B an independent draw of the same distribution
    real_a, seeds_a, real_b, seeds_b = real_sets(count, args.prompts)

    # 5. FID, KID, CLIP score (CLIP features), FID on Inception features, Inception Score
    metrics = distribution_metrics(
        generated, real_a, real_b, clip, clip_note, inception, inception_note, classifier
    )

    # 6. Attribute accuracy per prompt set
    generated_verdicts = verdicts_of(generated)
    model_accuracy, real_accuracy = attribute_accuracy(generated, generated_verdicts), attribute_accuracy(real_a)
    accuracy_report = {
        name: {"model": asdict(model_accuracy[name]), "real": asdict(real_accuracy[name])} for name in model_accuracy
    }

    # 7. Write the report and the grids
    classifier_info = read_classifier_info(classifier_path)
    report = {
        "format": FORMAT,
        "command": shlex.join(["python", "-m", "generator.evaluate", *argv]),
        "model": {"name": model.name, "path": str(model.path), "hash": model.content_hash},
        "settings": {
            **asdict(sampling),
            "prompts": args.prompts,
            "images_per_prompt": args.images_per_prompt,
            "prompt_seed": args.prompt_seed,
            "image_seeds": f"prompt i of each set: {IMAGE_SEED_STRIDE} i + j for its image j",
            "real_a_seeds": seeds_a,
            "real_b_seeds": seeds_b,
            "batch": args.batch,
            "device": str(model.device),
            "dtype": str(model.dtype).removeprefix("torch."),
        },
        "counts": {"generated": count, "real_a": len(real_a), "real_b": len(real_b)},
        "prompts": {name: [case.prompt for case in cases] for name, cases in prompt_sets.items()},
        "metrics": {key: {k: finite_tree(v) for k, v in value.items()} for key, value in metrics.items()},
        "accuracy": accuracy_report,
        "relations": relation_breakdown(generated, generated_verdicts),
        "held_out_pairs": held_out_breakdown(generated, generated_verdicts),
        "speed": {
            "seconds_per_image": seconds / count,
            "generation_seconds": seconds,
            "images": count,
            "batch": args.batch,
            "device": str(model.device),
            "threads": torch.get_num_threads(),
        },
        "classifier": {
            "path": str(classifier_path),
            **{k: classifier_info.get(k) for k in ("training", "validation_accuracy")},
        },
        "notes": notes
        + [
            "Inception Score over the one-object sets (single, held_out): the classifier reads one object.",
            "The real-vs-real column: for FID and KID, real set B against real set A (the noise floor of a "
            "distance on this many images); for IS and CLIP score, real set A itself.",
        ],
    }
    write_report(args.out, report, generated, args.images_per_prompt)
    summary = [f"accuracy {model_accuracy['all'].overall:.3f}"]
    if clip is not None:
        summary.append(f"FID (CLIP) {metrics['fid_clip']['model']:.4g} (floor {metrics['fid_clip']['real']:.4g})")
    summary.append(f"IS {metrics['inception_score']['model']['mean']:.3g}")
    summary.append(f"{seconds / count:.3g} s/image")
    log(", ".join(summary))
    log(f"wrote {args.out / 'report.json'}, {args.out / 'report.md'} and grids")
    return 0


if __name__ == "__main__":
    sys.exit(main())

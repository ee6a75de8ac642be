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
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from generator.data.shapes64 import CANVAS, PromptCase, render, validation_prompt_sets
from generator.evaluation.attributes import AccuracyReport, Verdict, accuracy, check, parse_prompt
from generator.evaluation.metrics import clip_score, frechet_distance, inception_score, kernel_inception_distance
from generator.limits import MAX_IMAGES_PER_REQUEST
from generator.loading import LoadedModel
from generator.pipeline import GenerationRequest, generate, resolve_request
from generator.schedulers import SCHEDULERS

FORMAT = "generator-evaluation/1"
PROMPT_SETS = ("single", "held_out", "relation")
ONE_OBJECT_SETS = ("single", "held_out")  # the classifier (hence the Inception Score) reads one-object images
PROMPT_SEED = 0
IMAGE_SEED_STRIDE = 1000  # prompt i's images have seeds 1000 i, 1000 i + 1, …
REAL_A_FIRST_SEED = 100
REAL_B_FIRST_SEED = 200
KID_SUBSETS = 10
GRID_PROMPTS = 16  # prompts shown per grid
INCEPTION_OPTION = "--inception-weights"


# --- Image sets ---------------------------------------------------------------------------------


@dataclass
class ImageSet:
    """uint8 images (N, 64, 64, 3), each with its prompt and the prompt set it belongs to."""

    images: np.ndarray
    prompts: list[str]
    sets: list[str]

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, names: Sequence[str]) -> ImageSet:
        rows = [i for i, name in enumerate(self.sets) if name in names]
        return ImageSet(self.images[rows], [self.prompts[i] for i in rows], [self.sets[i] for i in rows])


@dataclass(frozen=True)
class Sampling:
    """How every image of a run is generated."""

    scheduler: str
    steps: int
    guidance_scale: float
    width: int
    height: int


def resolve_sampling(
    model: LoadedModel, *, scheduler: str | None = None, steps: int | None = None, guidance: float | None = None
) -> Sampling:
    """The model's defaults where None, at the shapes64 canvas size; raises ValueError if the model refuses them."""
    probe = resolve_request(
        model,
        GenerationRequest(
            prompt="a red circle",
            width=CANVAS,
            height=CANVAS,
            steps=steps,
            guidance_scale=guidance,
            scheduler=scheduler,
            seed=0,
        ),
    )
    return Sampling(probe.scheduler, probe.steps, probe.guidance_scale, probe.width, probe.height)


def generate_images(
    model: LoadedModel,
    prompt_sets: dict[str, list[PromptCase]],
    images_per_prompt: int,
    sampling: Sampling,
    *,
    batch: int = 32,
    log: Callable[[str], None] | None = None,
) -> tuple[ImageSet, float]:
    """Every prompt's images, and the seconds spent in `generate` (loading, rendering and metrics excluded)."""
    requests, sets = [], []
    for name in PROMPT_SETS:
        for i, case in enumerate(prompt_sets[name]):
            requests.append(
                GenerationRequest(
                    prompt=case.prompt,
                    width=sampling.width,
                    height=sampling.height,
                    steps=sampling.steps,
                    guidance_scale=sampling.guidance_scale,
                    scheduler=sampling.scheduler,
                    seed=IMAGE_SEED_STRIDE * i,
                    num_images=images_per_prompt,
                )
            )
            sets.append(name)
    per_call = max(1, batch // images_per_prompt)  # whole requests per `generate` call
    images, prompts, image_sets = [], [], []
    seconds = 0.0
    for start in range(0, len(requests), per_call):
        chunk = requests[start : start + per_call]
        started = time.perf_counter()
        results = generate(model, chunk)
        seconds += time.perf_counter() - started
        for result, name in zip(results, sets[start : start + per_call]):
            for image in result.images:
                images.append(np.asarray(image.image.convert("RGB")))
                prompts.append(result.request.prompt)
                image_sets.append(name)
        if log is not None:
            log(f"generated {len(images)}/{len(requests) * images_per_prompt} images ({seconds:.1f} s)")
    return ImageSet(np.stack(images), prompts, image_sets), seconds


def real_set(first_seed: int, count: int, prompts: int) -> tuple[ImageSet, list[int]]:
    """`count` rendered validation scenes from `validation_prompt_sets(seed=s)`, s = first_seed, first_seed + 1, …"""
    images, texts, sets, seeds = [], [], [], []
    seed = first_seed
    while len(images) < count:
        for name, cases in validation_prompt_sets(seed=seed, count=prompts).items():
            for case in cases:
                images.append(np.asarray(render(case.scene)))
                texts.append(case.prompt)
                sets.append(name)
        seeds.append(seed)
        seed += 1
    return ImageSet(np.stack(images[:count]), texts[:count], sets[:count]), seeds


# --- Features -----------------------------------------------------------------------------------


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) → float32 (N, 3, H, W) in [-1, 1], as the CLIP stage was trained."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


class ClipFeatures:
    """The model's own CLIP (`clip/`): unit image embeddings for FID/KID, and text embeddings for the CLIP score.

    The text side uses `clip/`'s tokenizer when that folder holds one, else the model's `tokenizer/`
    (the training export shares one tokenizer between CLIP and the text encoder).
    """

    def __init__(self, clip_dir: Path, fallback_tokenizer_dir: Path, device: torch.device) -> None:
        from transformers import CLIPModel, CLIPTokenizer

        self.device = device
        self.model = CLIPModel.from_pretrained(clip_dir, local_files_only=True, dtype=torch.float32)
        self.model.to(device).eval().requires_grad_(False)
        has_tokenizer = any((clip_dir / name).is_file() for name in ("vocab.json", "tokenizer.json"))
        tokenizer_dir = clip_dir if has_tokenizer else fallback_tokenizer_dir
        self.tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        text_config = self.model.config.text_config
        if len(self.tokenizer) > text_config.vocab_size:
            raise ValueError(
                f"the tokenizer in {tokenizer_dir} has {len(self.tokenizer)} tokens but {clip_dir}'s text tower "
                f"knows {text_config.vocab_size}: they were not trained together"
            )
        self.max_tokens = min(self.tokenizer.model_max_length, text_config.max_position_embeddings)

    @classmethod
    def for_model(cls, model: LoadedModel) -> tuple[ClipFeatures | None, str]:
        """The model's CLIP, or None and the reason."""
        clip_dir = model.path / "clip"
        if not (clip_dir / "config.json").is_file():
            return None, (
                f"{clip_dir} does not exist: FID, KID and CLIP score need the CLIP stage's image tower "
                "(the training export writes it); skipped"
            )
        return cls(clip_dir, model.path / "tokenizer", model.device), f"CLIP features from {clip_dir}"

    @torch.no_grad()
    def images(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """(N, projection_dim) unit image embeddings of uint8 images (N, 64, 64, 3)."""
        from generator.train.clip import image_embeddings

        parts = [
            image_embeddings(self.model, to_pixels(images[start : start + batch_size]).to(self.device))
            for start in range(0, len(images), batch_size)
        ]
        return torch.cat(parts).double().cpu().numpy()

    @torch.no_grad()
    def texts(self, prompts: list[str]) -> np.ndarray:
        """(N, projection_dim) unit text embeddings; each distinct prompt is encoded once."""
        from generator.train.clip import text_embeddings

        unique = list(dict.fromkeys(prompts))
        ids = self.tokenizer(
            unique, padding="max_length", max_length=self.max_tokens, truncation=True, return_tensors="pt"
        ).input_ids
        embeddings = text_embeddings(self.model, ids.to(self.device)).double().cpu().numpy()  # (U, D)
        return embeddings[[unique.index(p) for p in prompts]]


class InceptionFeatures:
    """2048-d pool features of an Inception v3 loaded from a local file (never downloaded)."""

    def __init__(self, network: torch.nn.Module, kind: str, path: Path) -> None:
        self.network, self.kind, self.path = network, kind, path

    @classmethod
    def from_path(cls, value: str | Path | None) -> tuple[InceptionFeatures | None, str]:
        """The network in the local weight file `value` (`--inception-weights`), or None and why not."""
        if not value:
            return None, (
                f"not available: pass {INCEPTION_OPTION} with a local torchvision inception_v3 state dict or a "
                "pytorch-fid pt_inception file to add it (weights are never downloaded)"
            )
        path = Path(value)
        if not path.is_file():
            return None, f"not available: {INCEPTION_OPTION} {value} is not a file"
        try:
            import torchvision  # noqa: F401
        except ImportError:
            return None, f"not available: {INCEPTION_OPTION} is given but torchvision is not installed"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            fid_variant = state["fc.weight"].shape[0] == 1008  # TF's 1008 classes: pytorch-fid's network
            aux_logits = any(key.startswith("AuxLogits.") for key in state)
            network = _fid_inception() if fid_variant else _torchvision_inception(aux_logits)
            network.load_state_dict(state)  # strict: a partly loaded network would give a wrong FID silently
        except ImportError:
            return None, f"not available: {path} is pytorch-fid's Inception, but pytorch-fid is not installed"
        except Exception as error:  # not a state dict, or not an Inception v3's
            return None, f"not available: {path} is not an Inception v3 state dict ({type(error).__name__}: {error})"
        network.fc = torch.nn.Identity()
        kind = "pytorch-fid Inception v3" if fid_variant else "torchvision Inception v3"
        return cls(network.eval().requires_grad_(False), kind, path), f"{kind} pool features from {path}"

    @torch.no_grad()
    def images(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(N, 2048) pool features: images resized to 299 × 299 (bilinear), pixels in [-1, 1] as Inception expects."""
        parts = []
        for start in range(0, len(images), batch_size):
            pixels = to_pixels(images[start : start + batch_size])
            pixels = torch.nn.functional.interpolate(pixels, size=(299, 299), mode="bilinear", align_corners=False)
            parts.append(self.network(pixels).flatten(1))  # fc is Identity: the 2048-d average pool
        return torch.cat(parts).double().numpy()


def _torchvision_inception(aux_logits: bool) -> torch.nn.Module:
    from torchvision.models import inception_v3

    return inception_v3(weights=None, aux_logits=aux_logits, init_weights=False, transform_input=False)


def _fid_inception() -> torch.nn.Module:
    """pytorch-fid's Inception (TF weights' blocks), built as its `fid_inception_v3` does but without its download."""
    from pytorch_fid import inception as fid

    network = fid._inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    network.Mixed_5b = fid.FIDInceptionA(192, pool_features=32)
    network.Mixed_5c = fid.FIDInceptionA(256, pool_features=64)
    network.Mixed_5d = fid.FIDInceptionA(288, pool_features=64)
    network.Mixed_6b = fid.FIDInceptionC(768, channels_7x7=128)
    network.Mixed_6c = fid.FIDInceptionC(768, channels_7x7=160)
    network.Mixed_6d = fid.FIDInceptionC(768, channels_7x7=160)
    network.Mixed_6e = fid.FIDInceptionC(768, channels_7x7=192)
    network.Mixed_7b = fid.FIDInceptionE_1(1280)
    network.Mixed_7c = fid.FIDInceptionE_2(2048)
    return network


# --- Metrics ------------------------------------------------------------------------------------


def verdicts_of(image_set: ImageSet) -> list[Verdict]:
    """The attribute evaluator's verdict on each image against its prompt."""
    return [check(image, prompt) for image, prompt in zip(image_set.images, image_set.prompts)]


def attribute_accuracy(image_set: ImageSet, verdicts: list[Verdict] | None = None) -> dict[str, AccuracyReport]:
    """Accuracy per prompt set present, and over all images (`all`); `verdicts`: `verdicts_of(image_set)` if known."""
    verdicts = verdicts_of(image_set) if verdicts is None else verdicts
    reports = {}
    for name in PROMPT_SETS:
        chosen = [v for v, s in zip(verdicts, image_set.sets) if s == name]
        if chosen:
            reports[name] = accuracy(chosen)
    reports["all"] = accuracy(verdicts)
    return reports


def relation_breakdown(image_set: ImageSet, verdicts: list[Verdict]) -> dict[str, dict[str, int]]:
    """Two-object images by relation word: how many, all right, both objects right (count, colours and shapes),
    the relation right, and the relation right where both objects are: binding and placement apart.
    `verdicts` are `verdicts_of(image_set)`."""
    table: dict[str, dict[str, int]] = {}
    for verdict, name in zip(verdicts, image_set.sets, strict=True):
        if name != "relation":
            continue
        row = table.setdefault(parse_prompt(verdict.prompt).relation, dict.fromkeys(
            ("images", "correct", "objects_right", "relation_right", "relation_right_where_objects_right"), 0))
        objects_right = all(verdict.checks[k] for k in ("count", "colour", "shape"))
        row["images"] += 1
        row["correct"] += verdict.correct
        row["objects_right"] += objects_right
        row["relation_right"] += verdict.checks["relation"]
        row["relation_right_where_objects_right"] += objects_right and verdict.checks["relation"]
    return dict(sorted(table.items()))


def held_out_breakdown(image_set: ImageSet, verdicts: list[Verdict]) -> dict[str, dict]:
    """Held-out-pair images by pair: how many, all right, and `drawn_as`: {the colour and shape of the object the
    evaluator matched ("none" where it found none): images}, most frequent first. `verdicts` are
    `verdicts_of(image_set)`."""
    table: dict[str, dict] = {}
    for verdict, name in zip(verdicts, image_set.sets, strict=True):
        if name != "held_out":
            continue
        (wanted,) = parse_prompt(verdict.prompt).objects
        row = table.setdefault(f"{wanted.colour} {wanted.shape}", {"images": 0, "correct": 0, "drawn_as": {}})
        (found,) = verdict.matched
        drawn = "none" if found is None else f"{found.colour} {found.shape}"
        row["images"] += 1
        row["correct"] += verdict.correct
        row["drawn_as"][drawn] = row["drawn_as"].get(drawn, 0) + 1
    for row in table.values():
        row["drawn_as"] = dict(sorted(row["drawn_as"].items(), key=lambda item: (-item[1], item[0])))
    return dict(sorted(table.items()))


def inception_splits(count: int) -> int:
    """Ten splits as usual when there are images enough (>= 100 a split), fewer otherwise."""
    return max(1, min(10, count // 100))


def mean_std(pair: tuple[float, float]) -> dict[str, float]:
    return {"mean": pair[0], "std": pair[1]}


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


# --- Report ---------------------------------------------------------------------------------------


def prompt_grid(image_set: ImageSet, images_per_prompt: int, max_prompts: int = GRID_PROMPTS) -> Image.Image:
    """One block per prompt: its images side by side (2× enlarged), the prompt wrapped underneath."""
    try:
        font: ImageFont.ImageFont | ImageFont.FreeTypeFont = ImageFont.load_default(size=11)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType
        font = ImageFont.load_default()
    scale, gap, line_height = 2, 4, 13
    side = CANVAS * scale
    blocks = []
    for start in range(0, len(image_set), images_per_prompt):
        if len(blocks) == max_prompts:
            break
        blocks.append((image_set.images[start : start + images_per_prompt], image_set.prompts[start]))
    block_width = max(images_per_prompt * (side + gap) - gap, 176)
    lines = [textwrap.wrap(prompt, max(8, block_width // 6)) for _, prompt in blocks]
    block_height = side + 6 + line_height * max((len(x) for x in lines), default=1) + 8
    columns = max(1, min(len(blocks), 8 // images_per_prompt or 1))
    rows = max(1, -(-len(blocks) // columns))
    sheet = Image.new("RGB", (columns * (block_width + 2 * gap), rows * block_height + gap), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for b, ((images, _), text) in enumerate(zip(blocks, lines)):
        left, top = (b % columns) * (block_width + 2 * gap) + gap, (b // columns) * block_height + gap
        for j, image in enumerate(images):
            x = left + j * (side + gap)
            sheet.paste(Image.fromarray(image).resize((side, side), Image.Resampling.NEAREST), (x, top))
            draw.rectangle([x - 1, top - 1, x + side, top + side], outline=(200, 200, 200))
        for j, line in enumerate(text):
            draw.text((left, top + side + 4 + j * line_height), line, fill=(0, 0, 0), font=font)
    return sheet


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, dict):
        return f"{_fmt(value['mean'], digits)} ± {value['std']:.2g}"
    return f"{value:.{digits}g}"


def markdown_report(report: dict) -> str:
    settings, model, metrics = report["settings"], report["model"], report["metrics"]
    counts = report["counts"]
    lines = [
        f"# Evaluation of `{model['name']}`",
        "",
        f"Model `{model['path']}`, sha256 `{model['hash']}`.",
        f"Sampling: `{settings['scheduler']}`, {settings['steps']} steps, guidance {settings['guidance_scale']}, "
        f"{settings['width']} × {settings['height']}; {settings['prompts']} prompts per set "
        f"(prompt seed {settings.get('prompt_seed', PROMPT_SEED)}) × "
        f"{settings['images_per_prompt']} images = {counts['generated']} generated images; "
        f"real sets A and B of {counts['real_a']} rendered validation scenes each.",
        "",
        f"Command: `{report['command']}`",
        "",
        "## Distribution and alignment",
        "",
        "| metric | model | real-vs-real noise floor |",
        "|---|---|---|",
    ]
    for metric in metrics.values():
        real = f"{_fmt(metric['real'])} {metric['real_is']}" if metric["real"] is not None else "n/a (see notes)"
        lines.append(f"| {metric['label']} | {_fmt(metric['model'])} | {real} |")
    lines += ["", "## Attribute accuracy", ""]
    attributes = sorted(
        {name for entry in report["accuracy"].values() for name in entry["model"]["per_attribute"]},
        key=lambda name: ("count", "background", "colour", "shape", "size", "position", "relation").index(name),
    )
    lines.append("| set | images | | overall | " + " | ".join(attributes) + " |")
    lines.append("|---|---|---|---|" + "---|" * len(attributes))
    for name, entry in report["accuracy"].items():
        for who in ("model", "real"):
            part = entry[who]
            cells = [f"{part['per_attribute'][a]:.3f}" if a in part["per_attribute"] else "" for a in attributes]
            label = who if who == "model" else "real A"
            lines.append(f"| {name} | {part['count']} | {label} | {part['overall']:.3f} | " + " | ".join(cells) + " |")
    if report.get("relations"):
        lines += [
            "",
            "Two-object prompts by relation word (images; all right; both objects right in count, colour and shape; "
            "relation right; relation right where both objects are):",
            "",
            "| relation | images | all right | objects right | relation right | relation right where objects right |",
            "|---|---|---|---|---|---|",
        ]
        for relation, row in report["relations"].items():
            lines.append(
                f"| {relation} | {row['images']} | {row['correct']} | {row['objects_right']} | {row['relation_right']} "
                f"| {row['relation_right_where_objects_right']} of {row['objects_right']} |"
            )
    if report.get("held_out_pairs"):
        lines += [
            "",
            "Held-out colour–shape prompts by pair (images; all right; what the evaluator found, as colour and shape):",
            "",
            "| pair | images | all right | drawn as |",
            "|---|---|---|---|",
        ]
        for pair, row in report["held_out_pairs"].items():
            drawn = ", ".join(f"{what} {n}" for what, n in row["drawn_as"].items())
            lines.append(f"| {pair} | {row['images']} | {row['correct']} | {drawn} |")
    speed = report["speed"]
    lines += [
        "",
        "## Speed",
        "",
        f"{speed['seconds_per_image']:.4g} seconds per image ({speed['images']} images in "
        f"{speed['generation_seconds']:.1f} s of generation, batches of up to {speed['batch']} images, "
        f"device {speed['device']}, {speed['threads']} torch threads).",
        "",
        "## Notes",
        "",
    ]
    lines += [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


# --- Command line -------------------------------------------------------------------------------


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


def main(argv: list[str] | None = None) -> int:
    from generator.evaluation.classifier import DEFAULT_PATH, cached_classifier, read_classifier_info
    from generator.loading import load_model
    from generator.model_info import ModelLoadError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    check_counts(parser, args)

    def log(message: str) -> None:
        print(message, flush=True)

    # 1. Load the model and resolve the sampling settings
    try:
        model = load_model(args.model, device=args.device, dtype=args.dtype)
        sampling = resolve_sampling(model, scheduler=args.scheduler, steps=args.steps, guidance=args.guidance)
        prompt_sets = validation_prompt_sets(seed=args.prompt_seed, count=args.prompts)
    except (ModelLoadError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    # 2. Feature extractors and the classifier, before the long part: what is missing shows at once
    notes = []
    try:
        clip, clip_note = ClipFeatures.for_model(model)
    except (OSError, ValueError) as error:  # a clip/ folder that cannot be used: say why, measure the rest
        clip, clip_note = None, f"{model.path / 'clip'} could not be used ({error}); FID, KID and CLIP score skipped"
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
    real_a, seeds_a = real_set(REAL_A_FIRST_SEED, count, args.prompts)
    real_b, seeds_b = real_set(REAL_B_FIRST_SEED, count, args.prompts)

    # 5. CLIP features: FID, KID, CLIP score
    metrics: dict[str, dict] = {}
    if clip is not None:
        gen_features, a_features, b_features = (clip.images(s.images) for s in (generated, real_a, real_b))
        metrics["fid_clip"] = {
            "label": "FID, CLIP image features, vs real A ↓",
            "model": frechet_distance(gen_features, a_features),
            "real": frechet_distance(b_features, a_features),
            "real_is": "(real B vs real A)",
        }
        metrics["kid_clip"] = {
            "label": f"KID, CLIP image features, vs real A ({KID_SUBSETS} subsets) ↓",
            "model": mean_std(kernel_inception_distance(gen_features, a_features, subsets=KID_SUBSETS)),
            "real": mean_std(kernel_inception_distance(b_features, a_features, subsets=KID_SUBSETS)),
            "real_is": "(real B vs real A)",
        }
        gen_score = clip_score(gen_features, clip.texts(generated.prompts))
        real_score = clip_score(a_features, clip.texts(real_a.prompts))
    else:
        for key, label in (("fid_clip", "FID, CLIP image features ↓"), ("kid_clip", "KID, CLIP image features ↓")):
            metrics[key] = {"label": label, "model": None, "real": None, "real_is": "", "note": clip_note}
        gen_score = real_score = None

    # 6. Inception pool features, if a local network is given
    if inception is not None:
        a_pool = inception.images(real_a.images)
        metrics["fid_inception"] = {
            "label": f"FID, {inception.kind} pool features, vs real A ↓",
            "model": frechet_distance(inception.images(generated.images), a_pool),
            "real": frechet_distance(inception.images(real_b.images), a_pool),
            "real_is": "(real B vs real A)",
        }
    else:
        metrics["fid_inception"] = {
            "label": "FID, Inception pool features ↓",
            "model": None,
            "real": None,
            "real_is": "",
            "note": inception_note,
        }

    # 7. Inception Score from the shapes64 classifier's colour × shape probabilities
    one_object, real_one_object = generated.subset(ONE_OBJECT_SETS), real_a.subset(ONE_OBJECT_SETS)
    splits = inception_splits(len(one_object))
    metrics["inception_score"] = {
        "label": f"Inception Score, shapes64 classifier (18 colour × shape classes), {splits} split(s) ↑",
        "model": mean_std(inception_score(classifier.probabilities(one_object.images), splits=splits)),
        "real": mean_std(inception_score(classifier.probabilities(real_one_object.images), splits=splits)),
        "real_is": "(real A)",
    }
    metrics["clip_score"] = {
        "label": "CLIP score, images vs their prompts ↑",
        "model": gen_score,
        "real": real_score,
        "real_is": "(real A with its prompts)" if real_score is not None else "",
        **({} if clip is not None else {"note": clip_note}),
    }

    # 8. Attribute accuracy per prompt set
    generated_verdicts = verdicts_of(generated)
    model_accuracy, real_accuracy = attribute_accuracy(generated, generated_verdicts), attribute_accuracy(real_a)
    accuracy_report = {
        name: {"model": asdict(model_accuracy[name]), "real": asdict(real_accuracy[name])} for name in model_accuracy
    }

    # 9. Write the report and the grids
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
        "metrics": {key: {k: _finite_tree(v) for k, v in value.items()} for key, value in metrics.items()},
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
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (args.out / "report.md").write_text(markdown_report(report), encoding="utf-8")
    for name in PROMPT_SETS:
        prompt_grid(generated.subset([name]), args.images_per_prompt).save(args.out / f"grid_{name}.png")
    summary = [f"accuracy {model_accuracy['all'].overall:.3f}"]
    if clip is not None:
        summary.append(f"FID (CLIP) {metrics['fid_clip']['model']:.4g} (floor {metrics['fid_clip']['real']:.4g})")
    summary.append(f"IS {metrics['inception_score']['model']['mean']:.3g}")
    summary.append(f"{seconds / count:.3g} s/image")
    log(", ".join(summary))
    log(f"wrote {args.out / 'report.json'}, {args.out / 'report.md'} and grids")
    return 0


def _finite_tree(value):
    """Floats that are not finite become None, so that report.json is strict JSON."""
    if isinstance(value, dict):
        return {k: _finite_tree(v) for k, v in value.items()}
    if isinstance(value, float):
        return _finite(value)
    return value


if __name__ == "__main__":
    sys.exit(main())

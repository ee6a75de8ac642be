"""The evaluation's measurements and report: attribute accuracy and its breakdowns, the distribution metrics
beside their real-vs-real reference, `report.md` and the prompt grids.

`report.json`'s layout (`FORMAT`) is built by `generator.evaluate.main`; `markdown_report` renders it.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from generator.data.shapes64 import CANVAS, parse_prompt
from generator.evaluation.attributes import AccuracyReport, Verdict, accuracy, check
from generator.evaluation.features import ClipFeatures, InceptionFeatures
from generator.evaluation.image_sets import ONE_OBJECT_SETS, PROMPT_SEED, PROMPT_SETS, ImageSet
from generator.evaluation.metrics import clip_score, frechet_distance, inception_score, kernel_inception_distance

FORMAT = "generator-evaluation/1"
KID_SUBSETS = 10
GRID_PROMPTS = 16  # prompts shown per grid


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


def distribution_metrics(
    generated: ImageSet,
    real_a: ImageSet,
    real_b: ImageSet,
    clip: ClipFeatures | None,
    clip_note: str,
    inception: InceptionFeatures | None,
    inception_note: str,
    classifier,
) -> dict[str, dict]:
    """FID and KID on CLIP features, FID on Inception features, Inception Score and CLIP score: each with the model's
    value, the real-vs-real reference (`real_is` says which), and a `note` where it could not be measured."""
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

    # Inception pool features, if a local network is given
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

    # Inception Score from the shapes64 classifier's colour × shape probabilities
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
    return metrics


def finite_tree(value):
    """Floats that are not finite become None, so that report.json is strict JSON."""
    if isinstance(value, dict):
        return {k: finite_tree(v) for k, v in value.items()}
    if isinstance(value, float):
        return _finite(value)
    return value


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


def write_report(out: Path, report: dict, generated: ImageSet, images_per_prompt: int) -> None:
    """`report.json`, `report.md` and one prompt grid per prompt set under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "report.md").write_text(markdown_report(report), encoding="utf-8")
    for name in PROMPT_SETS:
        prompt_grid(generated.subset([name]), images_per_prompt).save(out / f"grid_{name}.png")

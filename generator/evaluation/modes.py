"""The image modes measured on shapes64: img2img, inpainting, variations, the hires fix and a style recipe.

`python -m generator.evaluation.modes --model DIR --out DIR [--prompts 32] [--seeds 2] [--prompt-seed 0]`
writes `report.json`, `report.md`, one grid per mode (`recolour.png`, `inpaint.png`, `variations_grid.png`,
`hires.png`, `style.png`), the curve `variations.png` and `style_init.png` (the style example's input).

Prompts are the validation prompt sets (`validation_prompt_sets(prompt_seed, prompts)`); prompt i of a mode gets
`--seeds` images with seeds 1000 i, 1000 i + 1, … (as `generator.evaluate`), at the model's scheduler, steps and
guidance. Every image is judged by the attribute evaluator (`check`) against the prompt it was made for.

1. Recolour (img2img): the rendered scene of a `single` prompt, the prompt with the object's colour changed (to a
   colour that the shape was trained with), at each strength of `RECOLOUR_STRENGTHS`.
2. Inpaint: a `relation` scene with one of its two objects taken out (the first for even i, the second for odd
   i) is the init image; the mask is that object's cell grown by `CELL_MARGIN`, less the kept object's box; the
   prompt is the scene's own two-object caption. Judged: the whole prompt, and the kept object (its colour, shape,
   size and cell, by `check` on it alone, the object count aside).
3. Variations: the first `VARIATION_PROMPTS` `single` prompts with `subseed` = seed + 500 at each
   `subseed_strength` of `VARIATION_STRENGTHS`: the mean absolute pixel difference (0–255) from the parent image
   (strength 0) and the share still judged right.
4. Hires fix: `single` and `relation` prompts at 64 × 64, and with `hires_scale` 2 (128 × 128) for each upscaler
   of `HIRES_UPSCALERS`, Lanczos-downscaled to 64 × 64 to be judged.
5. Style: the `single` scenes re-rendered on another background by img2img at each of `STYLE_STRENGTHS`; the
   worked example (the grid's first row, its command in the report) is the first one right at the best strength.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from generator.data.shapes64 import (
    BACKGROUNDS,
    CANVAS,
    COLOURS,
    COLUMNS,
    ROWS,
    TRAINING_PAIRS,
    ObjectSpec,
    PromptCase,
    PromptSpec,
    Scene,
    Shape,
    full_caption,
    render,
    validation_prompt_sets,
)
from generator.evaluation.attributes import Verdict, accuracy, check
from generator.evaluation.image_sets import (
    IMAGE_SEED_STRIDE,
    PROMPT_SEED,
    Sampling,
    generate_in_batches,
    resolve_sampling,
)
from generator.limits import MAX_IMAGES_PER_REQUEST

FORMAT = "generator-modes/1"
RECOLOUR_STRENGTHS = (0.5, 0.7, 0.9)
INPAINT_STRENGTH = 1.0  # the masked cell starts from pure noise
INPAINT_MASK_BLUR = 2  # pixels; the engine's default (4) would reach into the kept object
CELL_MARGIN = 4  # the mask is the 16-pixel cell grown by this on each side: it holds any small object of the cell
KEEP_CLEARANCE = 2  # pixels around the kept object's box left out of the mask
VARIATION_STRENGTHS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
VARIATION_PROMPTS = 8  # the first 8 single-object prompts (or --prompts, if fewer)
SUBSEED_OFFSET = 500  # image j of prompt i: seed 1000 i + j, subseed 1000 i + 500 + j
HIRES_SCALE = 2.0
HIRES_UPSCALERS = ("latent", "lanczos")
STYLE_STRENGTHS = (0.7, 0.8, 0.9)
GRID_ROWS = 4  # prompts shown in each grid
SCALE = 2  # grid tiles: 64 × 64 images enlarged 2× (nearest)

Images = list[list[np.ndarray]]  # per request, its images (H, W, 3) uint8
Run = Callable[[list], Images]


# --- The five modes -------------------------------------------------------------------------


def recoloured(case: PromptCase, i: int) -> PromptCase:
    """The single-object case with another colour: the i-th (cyclically) colour its shape was trained with."""
    (obj,) = case.scene.objects
    colours = [c for c in COLOURS if c != obj.colour and (c, obj.shape) in TRAINING_PAIRS]
    scene = replace(case.scene, objects=(replace(obj, colour=colours[i % len(colours)]),))
    prompt = full_caption(scene)
    return PromptCase(prompt, replace(scene, caption=prompt))


def img2img_sweep(
    run: Run, sampling: Sampling, cases: Sequence[PromptCase], targets: Sequence[PromptCase], strengths, seeds: int
) -> tuple[list[list[list[Verdict]]], list[Images]]:
    """img2img from each case's rendered scene to its target's prompt at each strength: the verdicts on the target
    prompt and the images, both indexed [strength][case][image]."""
    inits = [render(case.scene) for case in cases]
    requests = [
        sampling.request(
            target.prompt, seed=IMAGE_SEED_STRIDE * i, num_images=seeds, init_image=init, strength=strength
        )
        for strength in strengths
        for i, (target, init) in enumerate(zip(targets, inits))
    ]
    flat, n = run(requests), len(cases)
    outputs = [flat[s * n : (s + 1) * n] for s in range(len(strengths))]
    verdicts = [
        [[check(image, t.prompt) for image in images] for t, images in zip(targets, per_case)] for per_case in outputs
    ]
    return verdicts, outputs


def strength_grid(
    cases: Sequence[PromptCase], texts: Sequence[str], outputs: list[Images], strengths, shown: Sequence[int]
) -> Image.Image:
    """One row per shown case: its rendered scene, then image 0 at each strength."""
    rows = [([render(cases[i].scene)] + [per_strength[i][0] for per_strength in outputs], texts[i]) for i in shown]
    return tile_grid(rows, ["init"] + [f"strength {s}" for s in strengths])


def shares(verdicts: list[list[list[Verdict]]], strengths) -> dict[str, dict]:
    """The evaluator's accuracy report at each strength."""
    return {str(s): asdict(accuracy([v for row in per_case for v in row])) for s, per_case in zip(strengths, verdicts)}


def recolour(run: Run, sampling: Sampling, cases: Sequence[PromptCase], seeds: int) -> tuple[dict, Image.Image]:
    targets = [recoloured(case, i) for i, case in enumerate(cases)]
    verdicts, outputs = img2img_sweep(run, sampling, cases, targets, RECOLOUR_STRENGTHS, seeds)
    texts = [f"{case.prompt} -> {target.prompt}" for case, target in zip(cases, targets)]
    grid = strength_grid(cases, texts, outputs, RECOLOUR_STRENGTHS, range(min(GRID_ROWS, len(cases))))
    return {"strengths": shares(verdicts, RECOLOUR_STRENGTHS)}, grid


def cell_mask(cell: str, keep: Shape) -> Image.Image:
    """White (repaint) over `cell` grown by CELL_MARGIN, black over `keep`'s box grown by KEEP_CLEARANCE."""
    row, column = cell.split(" ")
    x, y, half = COLUMNS[column], ROWS[row], CANVAS // 8 + CELL_MARGIN
    mask = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(mask)
    draw.rectangle([x - half, y - half, x + half - 1, y + half - 1], fill=255)
    left, top, right, bottom = keep.box
    c = KEEP_CLEARANCE
    draw.rectangle([int(left) - c, int(top) - c, int(np.ceil(right)) + c - 1, int(np.ceil(bottom)) + c - 1], fill=0)
    return mask


def inpaint(run: Run, sampling: Sampling, cases: Sequence[PromptCase], seeds: int) -> tuple[dict, Image.Image]:
    inits, masks, kept = [], [], []
    for i, case in enumerate(cases):
        removed, keep = case.scene.objects if i % 2 == 0 else case.scene.objects[::-1]
        inits.append(render(Scene(case.scene.background, (keep,), None, "")))
        masks.append(cell_mask(removed.cell, keep))
        kept.append(PromptSpec((ObjectSpec(keep.colour, keep.shape, keep.size, keep.cell),), case.scene.background))
    requests = [
        sampling.request(
            case.prompt,
            seed=IMAGE_SEED_STRIDE * i,
            num_images=seeds,
            init_image=init,
            mask_image=mask,
            strength=INPAINT_STRENGTH,
            mask_blur=INPAINT_MASK_BLUR,
        )
        for i, (case, init, mask) in enumerate(zip(cases, inits, masks))
    ]
    outputs = run(requests)
    verdicts, kept_right, outside = [], [], []
    for case, init, mask, spec, images in zip(cases, inits, masks, kept, outputs):
        keep_region = np.asarray(mask) == 0
        for image in images:
            verdicts.append(check(image, case.prompt))
            kept_checks = check(image, spec).checks
            kept_right.append(all(ok for name, ok in kept_checks.items() if name != "count"))
            difference = np.abs(image.astype(np.float64) - np.asarray(init, dtype=np.float64)).mean(axis=-1)
            outside.append(float(difference[keep_region].mean()))
    section = {
        "prompt_right": accuracy(verdicts).overall,
        "kept_object_right": float(np.mean(kept_right)),
        "outside_mask_mean_abs_difference": float(np.mean(outside)),
        "accuracy": asdict(accuracy(verdicts)),
    }
    rows = [([inits[i], masks[i], *outputs[i][:4]], cases[i].prompt) for i in range(min(GRID_ROWS, len(cases)))]
    return section, tile_grid(rows, ["init", "mask"] + [f"image {j}" for j in range(min(seeds, 4))])


def variations(run: Run, sampling: Sampling, cases: Sequence[PromptCase], seeds: int) -> tuple[dict, Image.Image]:
    requests = [
        sampling.request(
            case.prompt,
            seed=IMAGE_SEED_STRIDE * i,
            num_images=seeds,
            subseed=IMAGE_SEED_STRIDE * i + SUBSEED_OFFSET,
            subseed_strength=strength,
        )
        for strength in VARIATION_STRENGTHS
        for i, case in enumerate(cases)
    ]
    outputs = run(requests)
    n = len(cases)
    parents = outputs[:n]  # subseed_strength 0: the seed's own image
    curve = {}
    for s, strength in enumerate(VARIATION_STRENGTHS):
        distances, right = [], []
        for case, parent, images in zip(cases, parents, outputs[s * n : (s + 1) * n]):
            for before, after in zip(parent, images):
                distances.append(float(np.abs(after.astype(np.float64) - before).mean()))
                right.append(check(after, case.prompt).correct)
        curve[str(strength)] = {"mean_abs_difference": float(np.mean(distances)), "right": float(np.mean(right))}
    rows = [
        ([outputs[s * n + i][0] for s in range(len(VARIATION_STRENGTHS))], cases[i].prompt)
        for i in range(min(GRID_ROWS, n))
    ]
    return {"curve": curve}, tile_grid(rows, [f"{s:g}" for s in VARIATION_STRENGTHS])


def variations_figure(curve: dict) -> Figure:
    strengths = [float(s) for s in curve]
    figure = Figure(figsize=(5, 3.2), layout="constrained")
    ax = figure.subplots()
    ax.plot(strengths, [v["mean_abs_difference"] for v in curve.values()], "o-", color="tab:blue")
    ax.set_xlabel("subseed_strength")
    ax.set_ylabel("mean |pixel − parent| (0–255)", color="tab:blue")
    right = ax.twinx()
    right.plot(strengths, [v["right"] for v in curve.values()], "s--", color="tab:orange")
    right.set_ylim(0, 1.05)
    right.set_ylabel("judged right", color="tab:orange")
    ax.set_title("Variations: distance from the parent image", fontsize=10)
    return figure


def hires(run: Run, sampling: Sampling, cases: dict[str, Sequence[PromptCase]], seeds: int) -> tuple[dict, Image.Image]:
    flat = [(name, i, case) for name, chosen in cases.items() for i, case in enumerate(chosen)]
    variants = {"64x64": {}} | {
        f"hires {u}": {"hires_scale": HIRES_SCALE, "hires_upscaler": u} for u in HIRES_UPSCALERS
    }
    requests = [
        sampling.request(case.prompt, seed=IMAGE_SEED_STRIDE * i, num_images=seeds, **fields)
        for fields in variants.values()
        for _, i, case in flat
    ]
    outputs = run(requests)
    n = len(flat)
    section: dict[str, dict] = {}
    for v, variant in enumerate(variants):
        for name in cases:
            judged = [
                check(downscale(image), case.prompt).correct
                for (set_name, _, case), images in zip(flat, outputs[v * n : (v + 1) * n])
                if set_name == name
                for image in images
            ]
            section.setdefault(variant, {})[name] = float(np.mean(judged))
    rows = [
        ([outputs[v * n + k][0] for v in range(len(variants))], flat[k][2].prompt) for k in range(min(GRID_ROWS, n))
    ]
    return section, tile_grid(rows, ["64x64"] + [f"{v} (128x128)" for v in list(variants)[1:]])


def downscale(image: np.ndarray) -> np.ndarray:
    if image.shape[:2] == (CANVAS, CANVAS):
        return image
    return np.asarray(Image.fromarray(image).resize((CANVAS, CANVAS), Image.Resampling.LANCZOS))


def restyled(case: PromptCase, i: int) -> PromptCase:
    """The case on another background (the i-th, cyclically, of the other two)."""
    others = [b for b in BACKGROUNDS if b != case.scene.background]
    scene = replace(case.scene, background=others[i % len(others)])
    prompt = full_caption(scene)
    return PromptCase(prompt, replace(scene, caption=prompt))


def style(run: Run, sampling: Sampling, cases: Sequence[PromptCase], seeds: int) -> tuple[dict, Image.Image]:
    targets = [restyled(case, i) for i, case in enumerate(cases)]
    verdicts, outputs = img2img_sweep(run, sampling, cases, targets, STYLE_STRENGTHS, seeds)
    section = {"strengths": shares(verdicts, STYLE_STRENGTHS)}
    # The worked example: the first case whose image 0 is right at the best strength (else case 0 there).
    best = max(range(len(STYLE_STRENGTHS)), key=lambda s: section["strengths"][str(STYLE_STRENGTHS[s])]["overall"])
    example = next((i for i, row in enumerate(verdicts[best]) if row[0].correct), 0)
    section["example"] = {
        "index": example,
        "init": cases[example].prompt,
        "prompt": targets[example].prompt,
        "seed": IMAGE_SEED_STRIDE * example,
        "strength": STYLE_STRENGTHS[best],
        "right": verdicts[best][example][0].correct,
    }
    shown = [example] + [i for i in range(len(cases)) if i != example][: GRID_ROWS - 1]
    return section, strength_grid(cases, [t.prompt for t in targets], outputs, STYLE_STRENGTHS, shown)


# --- Grids and the report -------------------------------------------------------------------


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=11)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType
        return ImageFont.load_default()


def tile_grid(rows: Sequence[tuple[Sequence, str]], header: Sequence[str]) -> Image.Image:
    """Rows of tiles (PIL images or uint8 arrays; 64 × 64 ones enlarged 2×, nearest) with column titles on top
    and each row's text on its right."""
    font, side, gap, text_width, line = _font(), CANVAS * SCALE, 4, 300, 13
    columns = max(len(tiles) for tiles, _ in rows)
    top = line + gap
    sheet = Image.new("RGB", (columns * (side + gap) + gap + text_width, top + len(rows) * (side + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(header):
        draw.text((gap + c * (side + gap), 0), title, fill="black", font=font)
    for r, (tiles, text) in enumerate(rows):
        y = top + r * (side + gap)
        for c, tile in enumerate(tiles):
            image = tile if isinstance(tile, Image.Image) else Image.fromarray(tile)
            x = gap + c * (side + gap)
            sheet.paste(image.convert("RGB").resize((side, side), Image.Resampling.NEAREST), (x, y))
            draw.rectangle([x - 1, y - 1, x + side, y + side], outline=(200, 200, 200))  # shows white images' edges
        for j, part in enumerate(textwrap.wrap(text, text_width // 6)):
            draw.text((columns * (side + gap) + 2 * gap, y + j * line), part, fill="black", font=font)
    return sheet


def markdown_report(report: dict) -> str:
    model, settings, modes = report["model"], report["settings"], report["modes"]
    example = modes["style"]["example"]
    lines = [
        f"# Image modes of `{model['name']}`",
        "",
        f"Model `{model['path']}`, sha256 `{model['hash']}`.",
        f"Sampling: `{settings['scheduler']}`, {settings['steps']} steps, guidance {settings['guidance_scale']}, "
        f"{settings['width']} × {settings['height']}; "
        f"{settings['prompts']} prompts a mode (prompt seed {settings['prompt_seed']}), {settings['seeds']} images a "
        f"prompt ({settings['image_seeds']}). Device {settings['device']}, {settings['threads']} torch threads.",
        "",
        f"Command: `{report['command']}`",
        "",
        "Every share is of images the attribute evaluator (`generator.evaluation.attributes.check`) judges right.",
        "",
        "## 1. Recolouring by img2img",
        "",
        "The rendered scene of a single-object prompt, with the prompt's colour changed to one the shape was trained "
        "with; judged on the new prompt.",
        "",
        "| strength | images | all attributes | colour | shape | position | background |",
        "|---|---|---|---|---|---|---|",
    ]
    for strength, acc in modes["recolour"]["strengths"].items():
        cells = " | ".join(f"{acc['per_attribute'][a]:.3f}" for a in ("colour", "shape", "position", "background"))
        lines.append(f"| {strength} | {acc['count']} | {acc['overall']:.3f} | {cells} |")
    inpaint = modes["inpaint"]
    lines += [
        "",
        "![recolour](recolour.png)",
        "",
        "## 2. Inpainting a second object",
        "",
        f"A two-object validation scene with one object taken out; its cell (grown by {CELL_MARGIN} px, less the kept "
        f"object's box + {KEEP_CLEARANCE} px) masked; the scene's own caption as the prompt; strength "
        f"{INPAINT_STRENGTH}, mask blur {INPAINT_MASK_BLUR}.",
        "",
        "| images | two-object prompt right | kept object right | mean abs difference outside the mask (0–255) |",
        "|---|---|---|---|",
        f"| {inpaint['accuracy']['count']} | {inpaint['prompt_right']:.3f} | {inpaint['kept_object_right']:.3f} | "
        f"{inpaint['outside_mask_mean_abs_difference']:.2f} |",
        "",
        "![inpaint](inpaint.png)",
        "",
        "## 3. Variations",
        "",
        f"The first {settings['variation_prompts']} single-object prompts, `subseed` = seed + {SUBSEED_OFFSET}; "
        "distance from the parent image (`subseed_strength` 0).",
        "",
        "| subseed_strength | mean abs difference (0–255) | judged right |",
        "|---|---|---|",
    ]
    for strength, point in modes["variations"]["curve"].items():
        lines.append(f"| {strength} | {point['mean_abs_difference']:.2f} | {point['right']:.3f} |")
    hires_section = modes["hires"]
    sets = list(next(iter(hires_section.values())))
    lines += [
        "",
        "![variations](variations.png)",
        "",
        "![variations grid](variations_grid.png)",
        "",
        "## 4. Two-pass high resolution",
        "",
        f"`hires_scale` {HIRES_SCALE:g} (128 × 128; second pass at the engine's defaults), Lanczos-downscaled to "
        "64 × 64 to be judged, against plain 64 × 64 on the same prompts and seeds.",
        "",
        "| generation | " + " | ".join(sets) + " |",
        "|---|" + "---|" * len(sets),
    ]
    for variant, shares in hires_section.items():
        lines.append(f"| {variant} | " + " | ".join(f"{shares[s]:.3f}" for s in sets) + " |")
    lines += [
        "",
        "![hires](hires.png)",
        "",
        "## 5. Style transfer: another background",
        "",
        "img2img of a single-object scene with its prompt on another background; judged on the new prompt.",
        "",
        "| strength | images | all attributes | background | colour | shape | position |",
        "|---|---|---|---|---|---|---|",
    ]
    for strength, acc in modes["style"]["strengths"].items():
        cells = " | ".join(f"{acc['per_attribute'][a]:.3f}" for a in ("background", "colour", "shape", "position"))
        lines.append(f"| {strength} | {acc['count']} | {acc['overall']:.3f} | {cells} |")
    verdict = "judged right" if example["right"] else "judged wrong: no image 0 at this strength was right"
    lines += [
        "",
        f"Worked example, the grid's first row ({verdict}): `style_init.png` is the rendered scene of "
        f"“{example['init']}”;",
        "",
        "```",
        f"python -m generator generate --model {model['path']} --init-image {report['out']}/style_init.png "
        f'--strength {example["strength"]} --seed {example["seed"]} --prompt "{example["prompt"]}" --out out/style.png',
        "```",
        "",
        "![style](style.png)",
        "",
        "## Generation time",
        "",
        "| mode | seconds in `generate` |",
        "|---|---|",
    ]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in report["seconds"].items()]
    return "\n".join(lines) + "\n"


# --- Command line ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from generator.loading import load_model
    from generator.model_info import ModelLoadError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m generator.evaluation.modes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a diffusers-layout model folder")
    parser.add_argument("--out", type=Path, required=True, help="the report folder")
    parser.add_argument("--prompts", type=int, default=32, help="prompts a mode (default 32)")
    parser.add_argument("--seeds", type=int, default=2, help=f"images a prompt, 1 to {MAX_IMAGES_PER_REQUEST}")
    parser.add_argument("--prompt-seed", type=int, default=PROMPT_SEED)
    parser.add_argument("--steps", type=int, help="default: the model's")
    parser.add_argument("--batch", type=int, default=32, help="images per generate call (default 32)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, … (default: cuda when present)")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    args = parser.parse_args(argv)
    if args.prompts < 1 or not 1 <= args.seeds <= MAX_IMAGES_PER_REQUEST or args.batch < 1:
        parser.error(f"--prompts and --batch must be at least 1, --seeds from 1 to {MAX_IMAGES_PER_REQUEST}")

    try:
        prompt_sets = validation_prompt_sets(seed=args.prompt_seed, count=args.prompts)
        model = load_model(args.model, device=args.device, dtype=args.dtype)
        sampling = resolve_sampling(model, steps=args.steps)
    except (ModelLoadError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    seconds: dict[str, float] = {}

    def runner(mode: str) -> Run:
        """Generates a mode's requests in batches, counting its seconds in `generate`."""

        def run(requests: list) -> Images:
            per_request, spent = generate_in_batches(
                model, requests, batch=args.batch, log=lambda message: print(f"{mode}: {message}", flush=True)
            )
            seconds[mode] = seconds.get(mode, 0.0) + spent
            return [[np.asarray(image.convert("RGB")) for image in images] for images in per_request]

        return run

    single, relation = prompt_sets["single"], prompt_sets["relation"]
    jobs = {
        "recolour": lambda run: recolour(run, sampling, single, args.seeds),
        "inpaint": lambda run: inpaint(run, sampling, relation, args.seeds),
        "variations": lambda run: variations(run, sampling, single[:VARIATION_PROMPTS], args.seeds),
        "hires": lambda run: hires(run, sampling, {"single": single, "relation": relation}, args.seeds),
        "style": lambda run: style(run, sampling, single, args.seeds),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    modes = {}
    for name, job in jobs.items():
        modes[name], grid = job(runner(name))
        grid.save(args.out / ("variations_grid.png" if name == "variations" else f"{name}.png"))
    variations_figure(modes["variations"]["curve"]).savefig(args.out / "variations.png", dpi=120)
    render(single[modes["style"]["example"]["index"]].scene).save(args.out / "style_init.png")

    report = {
        "format": FORMAT,
        "command": shlex.join(["python", "-m", "generator.evaluation.modes", *argv]),
        "out": str(args.out),
        "model": {"name": model.name, "path": str(model.path), "hash": model.content_hash},
        "settings": {
            **asdict(sampling),
            "prompts": args.prompts,
            "seeds": args.seeds,
            "prompt_seed": args.prompt_seed,
            "image_seeds": f"prompt i of a mode: {IMAGE_SEED_STRIDE} i + j for its image j",
            "recolour_strengths": list(RECOLOUR_STRENGTHS),
            "inpaint": {
                "strength": INPAINT_STRENGTH,
                "mask_blur": INPAINT_MASK_BLUR,
                "cell_margin": CELL_MARGIN,
                "keep_clearance": KEEP_CLEARANCE,
            },
            "variation_strengths": list(VARIATION_STRENGTHS),
            "variation_prompts": len(single[:VARIATION_PROMPTS]),
            "subseed": f"seed + {SUBSEED_OFFSET}",
            "hires": {"scale": HIRES_SCALE, "upscalers": list(HIRES_UPSCALERS), "judged_at": "Lanczos to 64 x 64"},
            "style_strengths": list(STYLE_STRENGTHS),
            "batch": args.batch,
            "device": str(model.device),
            "dtype": str(model.dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(),
        },
        "modes": modes,
        "seconds": seconds,
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (args.out / "report.md").write_text(markdown_report(report), encoding="utf-8")
    print(f"wrote {args.out / 'report.md'}, report.json and the grids ({sum(seconds.values()):.0f} s of generation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

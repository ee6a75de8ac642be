"""A style LoRA's effect on the built-in model, measured from pixels: does it draw its palette, and only when applied?

    python -m generator.evaluation.lora_style --model models/shapes64 \\
        --lora models/loras/shapes64-hue-step.safetensors --palette hue_step --out docs/lora

For each LoRA weight (0, 0.5, 1), the validation prompts (single objects and two-object relations, `--prompts` a set,
`--images` seeds each, the model's default sampler) are generated with the LoRA at that weight, and each image is
judged twice by the attribute evaluator:

- against the prompt as the palette draws it (`palette_prompt`: "a red circle" in hue_step is "an orange circle"):
  the style's pixel check, and, with every other attribute in the same check, whether the LoRA keeps them;
- against the prompt as written: what the model does without the style.

The worked example is style transfer: validation scenes drawn in the data set's own colours go through img2img
(`--strength`) with and without the LoRA; the report gives both judgements of each, and `style_transfer.png` shows
input, img2img without and with the LoRA side by side. Writes `report.md`, `report.json` and the pictures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from generator.data import shapes64
from generator.data.shapes64 import palette_prompt, validation_prompt_sets
from generator.evaluation.attributes import AccuracyReport, evaluate

WEIGHTS = (0.0, 0.5, 1.0)
SETS = ("single", "relation")


def lora_spec(path: Path, weight: float):
    from generator.lora import LoraSpec
    from generator.lora_info import read_lora_info

    return LoraSpec(name=path.stem, path=str(path), weight=weight, sha256=read_lora_info(path).sha256)


def generate_images(model, prompts: list[str], seeds: list[int], loras: tuple, **fields) -> np.ndarray:
    """(len(prompts) × len(seeds), 64, 64, 3) uint8, prompt-major, in batches of 32 requests."""
    from generator.pipeline import GenerationRequest, generate

    requests = [GenerationRequest(prompt=p, seed=s, loras=loras, **fields) for p in prompts for s in seeds]
    images = []
    for i in range(0, len(requests), 32):
        images += [np.asarray(r.images[0].image) for r in generate(model, requests[i : i + 32])]
    return np.stack(images)


def judged(images: np.ndarray, prompts: list[str], palette: str, per_prompt: int) -> dict[str, AccuracyReport]:
    repeated = [p for p in prompts for _ in range(per_prompt)]
    return {
        "as_palette": evaluate(zip(images, [palette_prompt(p, palette) for p in repeated], strict=True)),
        "as_written": evaluate(zip(images, repeated, strict=True)),
    }


def run(model_dir: Path, lora: Path, palette: str, out: Path, prompts: int, images: int, strength: float) -> dict:
    from generator.evaluation.modes import tile_grid
    from generator.loading import load_model

    model = load_model(model_dir)
    sets = validation_prompt_sets(seed=0, count=prompts)
    seeds = list(range(images))
    results: dict = {"model": str(model_dir), "lora": str(lora), "palette": palette, "prompts": prompts,
                     "images_per_prompt": images, "weights": {}}
    sheets = []
    for weight in WEIGHTS:
        loras = (lora_spec(lora, weight),)
        row = {}
        for name in SETS:
            texts = [case.prompt for case in sets[name]]
            pixels = generate_images(model, texts, seeds, loras)
            row[name] = {kind: vars(report) for kind, report in judged(pixels, texts, palette, images).items()}
            if name == "single":
                sheets.append((pixels[: 8 * images : images], f"LoRA weight {weight}"))  # 8 prompts, seed 0
        results["weights"][str(weight)] = row

    # Style transfer: img2img of scenes drawn in the data set's own colours, without and with the LoRA.
    cases = sets["single"][:prompts]
    inputs = [shapes64.render(case.scene) for case in cases]
    texts = [case.prompt for case in cases]
    transfer = {}
    for label, weight in (("without", 0.0), ("with", 1.0)):
        from generator.pipeline import GenerationRequest, generate

        requests = [
            GenerationRequest(prompt=t, seed=0, init_image=image, strength=strength, loras=(lora_spec(lora, weight),))
            for t, image in zip(texts, inputs, strict=True)
        ]
        pixels = np.stack([np.asarray(r.images[0].image) for r in generate(model, requests)])
        transfer[label] = pixels
        results.setdefault("style_transfer", {"strength": strength})[label] = {
            kind: vars(report) for kind, report in judged(pixels, texts, palette, 1).items()
        }

    out.mkdir(parents=True, exist_ok=True)
    header = [f"{i + 1}" for i in range(8)]
    tile_grid(sheets, header).save(out / "weights.png")
    rows = [(inputs[:8], "input (the data set's colours)"), (transfer["without"][:8], f"img2img {strength}"),
            (transfer["with"][:8], f"img2img {strength} + LoRA")]
    tile_grid(rows, header).save(out / "style_transfer.png")
    (out / "report.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "report.md").write_text(format_report(results))
    return results


def format_report(results: dict) -> str:
    def cell(report: dict, attribute: str | None = None) -> str:
        value = report["overall"] if attribute is None else report["per_attribute"].get(attribute, float("nan"))
        return f"{value:.3f}"

    lines = [
        f"# Style LoRA `{Path(results['lora']).name}` on `{results['model']}`",
        "",
        f"Palette `{results['palette']}`; {results['prompts']} validation prompts a set, "
        f"{results['images_per_prompt']} seeds each, the model's default sampler. *As palette*: judged against the "
        "prompt as the palette draws it (a red circle should come out orange); *as written*: against the prompt.",
        "",
        "| weight | set | style: colour as palette | all attributes as palette | colour as written | all as written |",
        "|---|---|---|---|---|---|",
    ]
    for weight, row in results["weights"].items():
        for name, kinds in row.items():
            palette, written = kinds["as_palette"], kinds["as_written"]
            lines.append(f"| {weight} | {name} | {cell(palette, 'colour')} | {cell(palette)} | "
                         f"{cell(written, 'colour')} | {cell(written)} |")
    transfer = results["style_transfer"]
    lines += [
        "",
        f"Style transfer: img2img at strength {transfer['strength']} of single-object scenes drawn in the data set's "
        "colours (`style_transfer.png`: input, without the LoRA, with it).",
        "",
        "| img2img | colour as palette | all attributes as palette | colour as written | all as written |",
        "|---|---|---|---|---|",
    ]
    for label in ("without", "with"):
        palette, written = transfer[label]["as_palette"], transfer[label]["as_written"]
        lines.append(f"| {label} the LoRA | {cell(palette, 'colour')} | {cell(palette)} | {cell(written, 'colour')} | "
                     f"{cell(written)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/shapes64"))
    parser.add_argument("--lora", type=Path, default=Path("models/loras/shapes64-hue-step.safetensors"))
    parser.add_argument("--palette", default="hue_step", choices=list(shapes64.PALETTES))
    parser.add_argument("--out", type=Path, default=Path("docs/lora"))
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--strength", type=float, default=0.7)
    args = parser.parse_args(argv)
    results = run(args.model, args.lora, args.palette, args.out, args.prompts, args.images, args.strength)
    print(format_report(results))


if __name__ == "__main__":
    main()

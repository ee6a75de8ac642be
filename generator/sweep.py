"""Scheduler × steps × guidance sweep: attribute accuracy and FID against seconds per image.

`python -m generator.sweep --model DIR --out DIR [--schedulers ddim,euler,dpmpp_2m,unipc]
[--steps 5,10,20,50] [--guidance 2,4,7] [--prompts 16] [--prompt-seed 0]` generates, for every combination, the
evaluation's images (`generator.evaluation.image_sets`: the three prompt sets, fixed seeds, 64 × 64) with fewer
prompts, and measures

- attribute accuracy, over all images and per prompt set;
- FID on the model's CLIP image features against real set A (when the model has `clip/`), with the
  real B vs real A noise floor for scale;
- seconds per image (the wall clock of generation alone).

It writes `sweep.json`, `sweep.md` (one table row per combination) and `sweep.png` (quality against
seconds per image: one line per scheduler through its step counts, one panel column per guidance
scale). A combination the scheduler refuses (for example `pndm` on a zero-terminal-SNR model, or more
steps than it allows) is skipped, with the reason in the table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, NullFormatter

from generator.evaluate import check_counts, load_for_evaluation
from generator.evaluation.features import ClipFeatures
from generator.evaluation.image_sets import PROMPT_SEED, PROMPT_SETS, generate_images, real_sets, resolve_sampling
from generator.evaluation.metrics import frechet_distance
from generator.evaluation.report import attribute_accuracy
from generator.schedulers import SCHEDULERS

FORMAT = "generator-sweep/1"
DPI = 110


def _list(kind, text: str) -> list:
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}: {error}") from error
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


def _schedulers(text: str) -> list[str]:
    names = _list(str, text)
    unknown = [name for name in names if name not in SCHEDULERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown schedulers {unknown}; known: {', '.join(SCHEDULERS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m generator.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a diffusers-layout model folder")
    parser.add_argument("--out", type=Path, required=True, help="the sweep's folder")
    parser.add_argument("--schedulers", type=_schedulers, default=["ddim", "euler", "dpmpp_2m", "unipc"])
    parser.add_argument("--steps", type=lambda text: _list(int, text), default=[5, 10, 20, 50])
    parser.add_argument("--guidance", type=lambda text: _list(float, text), default=[2.0, 4.0, 7.0])
    parser.add_argument("--prompts", type=int, default=16, help="prompts per prompt set (default 16)")
    parser.add_argument("--images-per-prompt", type=int, default=1)
    parser.add_argument(
        "--prompt-seed", type=int, default=PROMPT_SEED,
        help=f"seed of the validation prompt sets (default {PROMPT_SEED}, the evaluation's)",
    )
    parser.add_argument("--batch", type=int, default=32, help="images per generate call (default 32)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, … (default: cuda when present)")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    return parser


# --- Outputs --------------------------------------------------------------------------------------


def markdown_table(sweep: dict) -> str:
    settings = sweep["settings"]
    floor = sweep["fid_noise_floor"]
    lines = [
        f"# Sampler sweep of `{sweep['model']['name']}`",
        "",
        f"Model `{sweep['model']['path']}`, sha256 `{sweep['model']['hash']}`; {settings['prompts']} prompts per set "
        f"(prompt seed {settings.get('prompt_seed', PROMPT_SEED)}) × {settings['images_per_prompt']} images = "
        f"{settings['images']} images per combination, 64 × 64.",
        "",
        f"Command: `{sweep['command']}`",
        "",
        "FID: CLIP image features, generated vs real set A; "
        + (f"noise floor (real B vs real A) {floor:.4g}." if floor is not None else "not measured (no clip/).")
        + " Accuracy: share of images correct in every attribute.",
        "",
        "| scheduler | steps | guidance | s / image | accuracy | " + " | ".join(PROMPT_SETS) + " | FID (CLIP) |",
        "|---|---|---|---|---|" + "---|" * len(PROMPT_SETS) + "---|",
    ]
    for row in sweep["results"]:
        head = f"| {row['scheduler']} | {row['steps']} | {row['guidance_scale']:g} |"
        if row["status"] != "ok":
            note = row["note"].replace("|", "\\|")  # a pipe would end the table cell
            lines.append(f"{head} skipped: {note} |" + " |" * (len(PROMPT_SETS) + 2))
            continue
        per_set = " | ".join(f"{row['accuracy'][name]:.3f}" for name in PROMPT_SETS)
        fid = f"{row['fid_clip']:.4g}" if row["fid_clip"] is not None else "n/a"
        lines.append(f"{head} {row['seconds_per_image']:.3g} | {row['accuracy']['all']:.3f} | {per_set} | {fid} |")
    if sweep["notes"]:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in sweep["notes"]]
    return "\n".join(lines) + "\n"


def sweep_figure(sweep: dict) -> Figure:
    """Quality against seconds per image: rows accuracy (and FID), one column per guidance scale."""
    guidances = sweep["settings"]["guidance"]
    schedulers = sweep["settings"]["schedulers"]
    rows = [("accuracy", "attribute accuracy (all sets) ↑")]
    if sweep["fid_noise_floor"] is not None:
        rows.append(("fid_clip", "FID, CLIP features ↓"))
    figure = Figure(figsize=(4.2 * len(guidances) + 0.6, 3.4 * len(rows) + 0.6), layout="constrained")
    axes = figure.subplots(len(rows), len(guidances), squeeze=False, sharex=True)
    ok = [row for row in sweep["results"] if row["status"] == "ok"]
    seconds = [row["seconds_per_image"] for row in ok]
    log_x = bool(seconds) and min(seconds) > 0 and max(seconds) / min(seconds) > 4
    colours = {name: f"C{i}" for i, name in enumerate(schedulers)}
    for column, guidance in enumerate(guidances):
        for r, (key, label) in enumerate(rows):
            ax = axes[r][column]
            for scheduler in schedulers:
                points = sorted(
                    (row["steps"], row["seconds_per_image"], row["accuracy"]["all"] if key == "accuracy" else row[key])
                    for row in ok
                    if row["scheduler"] == scheduler and row["guidance_scale"] == guidance
                )
                if not points:
                    continue
                steps, x, y = zip(*points)
                ax.plot(x, y, marker="o", color=colours[scheduler], label=scheduler)
                for s, xi, yi in points:
                    ax.annotate(str(s), (xi, yi), textcoords="offset points", xytext=(3, 3), fontsize=7)
            if key == "fid_clip":
                ax.axhline(sweep["fid_noise_floor"], color="gray", linestyle="--", linewidth=1, label="real B vs A")
            if key == "accuracy":
                ax.set_ylim(-0.02, 1.02)
            if log_x:
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
                ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on a short decade
            ax.set_title(f"guidance {guidance:g}", fontsize=10)
            ax.set_ylabel(label, fontsize=9)
            if r == len(rows) - 1:
                ax.set_xlabel("seconds per image (labels: steps)", fontsize=9)
            ax.grid(True, alpha=0.3)
            if column == 0 and ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    return figure


# --- Command line -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from generator.model_info import ModelLoadError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    check_counts(parser, args)

    # 1. Model, prompts, real sets and their CLIP features (once for every combination)
    try:
        model, prompt_sets = load_for_evaluation(args)
    except (ModelLoadError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    count = len(PROMPT_SETS) * args.prompts * args.images_per_prompt
    notes = []
    clip, clip_note = ClipFeatures.try_for_model(model, skipped="FID")
    if clip is None:
        notes.append(clip_note)
    real_a_features = floor = None
    if clip is not None:
        real_a, _, real_b, _ = real_sets(count, args.prompts)
        real_a_features = clip.images(real_a.images)
        floor = frechet_distance(clip.images(real_b.images), real_a_features)

    # 2. Every combination
    results = []
    for scheduler in args.schedulers:
        for steps in args.steps:
            for guidance in args.guidance:
                row = {"scheduler": scheduler, "steps": steps, "guidance_scale": guidance}
                try:
                    sampling = resolve_sampling(model, scheduler=scheduler, steps=steps, guidance=guidance)
                except ValueError as error:
                    results.append({**row, "status": "skipped", "note": str(error)})
                    print(f"{scheduler}, {steps} steps, guidance {guidance:g}: skipped ({error})", flush=True)
                    continue
                generated, seconds = generate_images(
                    model, prompt_sets, args.images_per_prompt, sampling, batch=args.batch
                )
                reports = attribute_accuracy(generated)
                fid = frechet_distance(clip.images(generated.images), real_a_features) if clip is not None else None
                results.append(
                    {
                        **row,
                        "status": "ok",
                        "seconds_per_image": seconds / len(generated),
                        "accuracy": {name: report.overall for name, report in reports.items()},
                        "per_attribute": reports["all"].per_attribute,
                        "fid_clip": fid,
                    }
                )
                print(
                    f"{scheduler}, {steps} steps, guidance {guidance:g}: accuracy {reports['all'].overall:.3f}"
                    + (f", FID {fid:.4g}" if fid is not None else "")
                    + f", {seconds / len(generated):.3g} s/image",
                    flush=True,
                )

    # 3. Outputs
    sweep = {
        "format": FORMAT,
        "command": shlex.join(["python", "-m", "generator.sweep", *argv]),
        "model": {"name": model.name, "path": str(model.path), "hash": model.content_hash},
        "settings": {
            "schedulers": args.schedulers,
            "steps": args.steps,
            "guidance": args.guidance,
            "prompts": args.prompts,
            "prompt_seed": args.prompt_seed,
            "images_per_prompt": args.images_per_prompt,
            "images": count,
            "batch": args.batch,
            "device": str(model.device),
            "dtype": str(model.dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(),
        },
        "fid_noise_floor": floor,
        "results": results,
        "notes": notes,
    }
    if not any(row["status"] == "ok" for row in results):
        sweep["notes"].append("every combination was skipped")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(
        json.dumps(sweep, indent=2, ensure_ascii=False, default=_json_number) + "\n", encoding="utf-8"
    )
    (args.out / "sweep.md").write_text(markdown_table(sweep), encoding="utf-8")
    sweep_figure(sweep).savefig(args.out / "sweep.png", dpi=DPI)
    print(f"wrote {args.out / 'sweep.json'}, {args.out / 'sweep.md'} and {args.out / 'sweep.png'}")
    return 0


def _json_number(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


if __name__ == "__main__":
    sys.exit(main())

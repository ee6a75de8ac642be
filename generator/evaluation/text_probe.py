"""How strongly a text encoder's hidden states respond to each caption attribute.

`python -m generator.evaluation.text_probe --model DIR [DIR ...] [--count 200]` prints, per model, the
relative change of the text encoder's hidden states (all token positions, as the UNet's cross-attention
sees them) when one attribute of a fully specified prompt is changed and the rest kept:

    change = ||h(prompt) - h(edited prompt)|| / ||h(prompt)||   (Frobenius norms, median over prompts)

Edits: the colour, the shape, the size, the cell (position phrase) or the background of a single-object
prompt; the relation, or the order of the two objects, of a two-object prompt. A new cell or relation
is one whose phrase has as many words (`in the top left` → `in the bottom right`, `above` → `below`),
so that the edit moves no other token. An attribute whose
change is near 0 is all but invisible to the UNet, whatever it is trained on. The first built-in model's
text encoder (trained only contrastively) changes 2.6% for a new cell and 2.6% for a new relation,
against 90% for a new colour (MODEL_CARD.md). The probe takes seconds; it runs no diffusion.

`--held-out` asks another question: does the encoder keep colour and shape apart for the colour–shape pairs that
no training image shows (`shapes64.HELD_OUT_PAIRS`)? Linear probes for colour and for shape are fitted on the
hidden states (all token positions, flattened) of every fully specified single-object caption of the training
pairs, and then read the captions of the held-out pairs, at each layer's output (layer 0: the token and position
embeddings, which are compositional by construction). Where a probe reads a held-out pair as a seen one (`orange
circle` as `orange square`), a UNet that learned its colours and shapes from the same states will draw it so.
A last row gives the probes the embeddings beside the last layer's states: do they keep to the compositional ones?
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from generator.data import shapes64
from generator.data.shapes64 import format_caption
from generator.text import tokenize

SINGLE_EDITS = ("colour", "shape", "size", "cell", "background")
RELATION_EDITS = ("relation", "order")


def _other(rng: np.random.Generator, options, current: str, words=lambda option: 1) -> str:
    """Another option whose phrase has as many words as `current`'s, so that no later token moves."""
    return str(rng.choice([o for o in options if o != current and words(o) == words(current)]))


def prompt_pairs(edit: str, count: int, seed: int = 0) -> list[tuple[str, str]]:
    """`count` (prompt, edited prompt) pairs in which only `edit` differs (validation scenes, full captions)."""
    rng = np.random.default_rng([seed, (SINGLE_EDITS + RELATION_EDITS).index(edit)])
    want_two = edit in RELATION_EDITS
    pairs: list[tuple[str, str]] = []
    index = 0
    while len(pairs) < count:
        scene = shapes64.make_scene(seed, index, "validation")
        index += 1
        if (len(scene.objects) == 2) != want_two:
            continue
        if edit == "background":
            edited = dataclasses.replace(scene, background=_other(rng, shapes64.BACKGROUNDS, scene.background))
        elif edit == "relation":
            edited = dataclasses.replace(
                scene, relation=_other(rng, shapes64.RELATIONS, scene.relation, lambda r: len(r.split()))
            )
        elif edit == "order":
            edited = dataclasses.replace(scene, objects=scene.objects[::-1])
        else:
            (obj,) = scene.objects
            options = {"colour": shapes64.COLOURS, "shape": shapes64.SHAPES, "size": shapes64.SIDES,
                       "cell": shapes64.CELLS}[edit]
            words = (lambda cell: len(shapes64.POSITION_PHRASES[cell].split())) if edit == "cell" else (lambda _: 1)
            new = _other(rng, options, getattr(obj, edit), words)
            edited = dataclasses.replace(scene, objects=(dataclasses.replace(obj, **{edit: new}),))
        first, second = format_caption(scene), format_caption(edited)
        if first != second:
            pairs.append((first, second))
    return pairs


@torch.no_grad()
def sensitivity(
    tokenizer, text_encoder, count: int = 200, seed: int = 0, edits: tuple[str, ...] = SINGLE_EDITS + RELATION_EDITS
) -> dict[str, float]:
    """{edit: median relative change of the hidden states} for each of `edits`."""
    text_encoder.eval()
    result = {}
    for edit in edits:
        pairs = prompt_pairs(edit, count, seed)
        first = text_encoder(tokenize(tokenizer, [a for a, _ in pairs]))[0].float()
        second = text_encoder(tokenize(tokenizer, [b for _, b in pairs]))[0].float()
        change = (first - second).flatten(1).norm(dim=1) / first.flatten(1).norm(dim=1)
        result[edit] = float(change.median())
    return result


def single_object_captions() -> tuple[list[str], list[tuple[str, str]]]:
    """Every fully specified single-object caption, and its (colour, shape) pair."""
    captions, pairs = [], []
    for size, colour, shape, cell, background in itertools.product(
        shapes64.SIDES, shapes64.COLOURS, shapes64.SHAPES, shapes64.CELLS, shapes64.BACKGROUNDS
    ):
        obj = shapes64.Shape(colour=colour, shape=shape, size=size, s=0, cx=0.0, cy=0.0, cell=cell)
        captions.append(format_caption(shapes64.Scene(background, (obj,), None, "")))
        pairs.append((colour, shape))
    return captions, pairs


def _fit_probe(features: torch.Tensor, labels: torch.Tensor, classes: int, steps: int = 300) -> torch.nn.Linear:
    """A softmax probe fitted full-batch (Adam, a little L2): deterministic for the same features."""
    probe = torch.nn.Linear(features.shape[1], classes)
    torch.nn.init.zeros_(probe.weight)
    torch.nn.init.zeros_(probe.bias)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(probe(features), labels) + 1e-3 * probe.weight.pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe


@torch.no_grad()
def held_out_probe(tokenizer, text_encoder) -> list[dict]:
    """Per layer ("0" the embeddings, …, and "0 and N": the embeddings beside the last layer's states): probe accuracy
    on the training pairs' captions (`fit_*`) and on the held-out pairs' (`colour`, `shape`), and `read_as`:
    {held-out pair: {pair the probes read: captions}}."""
    captions, pairs = single_object_captions()
    held = torch.tensor([pair in shapes64.HELD_OUT_PAIRS for pair in pairs])
    seen = ~held
    colours, shapes = list(shapes64.COLOURS), list(shapes64.SHAPES)
    colour_labels = torch.tensor([colours.index(c) for c, _ in pairs])
    shape_labels = torch.tensor([shapes.index(s) for _, s in pairs])
    text_encoder.eval()
    ids = tokenize(tokenizer, captions)
    length = int((ids != ids[0, -1]).sum(1).max()) + 1  # through the first end token of the longest caption
    states = text_encoder(ids, output_hidden_states=True)
    layers = list(states.hidden_states[:-1]) + [states.last_hidden_state]  # the last one after the final norm
    last = len(layers) - 1
    # And the embeddings beside the last layer: does a reader that has both keep to the compositional ones?
    both = torch.cat([layers[0], layers[-1]], 2)
    named = [(str(i), hidden) for i, hidden in enumerate(layers)] + [(f"0 and {last}", both)]
    results = []
    for index, hidden in named:
        features = hidden[:, :length].float().flatten(1)
        features = (features - features[seen].mean(0)) / (features[seen].std(0) + 1e-5)
        with torch.enable_grad():
            colour_probe = _fit_probe(features[seen], colour_labels[seen], len(colours))
            shape_probe = _fit_probe(features[seen], shape_labels[seen], len(shapes))
        colour_read, shape_read = colour_probe(features).argmax(1), shape_probe(features).argmax(1)
        read_as: dict[str, dict[str, int]] = {}
        for i in torch.nonzero(held).flatten().tolist():
            reads = read_as.setdefault(" ".join(pairs[i]), {})
            read = f"{colours[colour_read[i]]} {shapes[shape_read[i]]}"
            reads[read] = reads.get(read, 0) + 1
        results.append({
            "layer": index,
            "fit_colour": float((colour_read[seen] == colour_labels[seen]).float().mean()),
            "fit_shape": float((shape_read[seen] == shape_labels[seen]).float().mean()),
            "colour": float((colour_read[held] == colour_labels[held]).float().mean()),
            "shape": float((shape_read[held] == shape_labels[held]).float().mean()),
            "read_as": {pair: dict(sorted(reads.items(), key=lambda kv: -kv[1])) for pair, reads in read_as.items()},
        })
    return results


def print_held_out(model_dir: Path) -> None:
    print(f"{model_dir}: probes fitted on the training pairs' captions, read on the held-out pairs'")
    print("| layer | held-out colour | held-out shape | " + " | ".join(
        f"{c} {s} read as" for c, s in sorted(shapes64.HELD_OUT_PAIRS)) + " |")
    print("|---|---|---|" + "---|" * len(shapes64.HELD_OUT_PAIRS))
    for row in held_out_probe(*load_text_encoder(model_dir)):
        reads = [", ".join(f"{pair} {n}" for pair, n in row["read_as"][f"{c} {s}"].items())
                 for c, s in sorted(shapes64.HELD_OUT_PAIRS)]
        figures = f"| {row['layer']} | {100 * row['colour']:.0f}% | {100 * row['shape']:.0f}% | "
        print(figures + " | ".join(reads) + " |")


def load_text_encoder(model_dir: Path):
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(model_dir / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(model_dir / "text_encoder", dtype=torch.float32)
    return tokenizer, text_encoder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", required=True, type=Path, help="model folders (diffusers layout)")
    parser.add_argument("--count", type=int, default=200, help="prompt pairs per edit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--held-out", action="store_true",
                        help="probe how each layer represents the held-out colour-shape pairs instead")
    args = parser.parse_args(argv)
    if args.held_out:
        for model_dir in args.model:
            print_held_out(model_dir)
        return 0
    edits = SINGLE_EDITS + RELATION_EDITS
    print("| model | " + " | ".join(edits) + " |")
    print("|---|" + "---|" * len(edits))
    for model_dir in args.model:
        changes = sensitivity(*load_text_encoder(model_dir), count=args.count, seed=args.seed)
        print(f"| {model_dir} | " + " | ".join(f"{100 * changes[e]:.1f}%" for e in edits) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The CLIP stage's caption-only loss: one linear head per attribute on the text tower, reading what a caption says.

Targets come from the caption itself (`shapes64.parse_prompt`); an attribute the caption leaves out is ignored.
The heads are used in training only and are not exported.
"""

from __future__ import annotations

import torch

from generator.data import shapes64
from generator.data.shapes64 import parse_prompt

# What a caption can say, each with its options: the targets of the attribute heads.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "background": tuple(shapes64.BACKGROUNDS),
    "colour": tuple(shapes64.COLOURS),  # of the first (or only) object
    "shape": shapes64.SHAPES,
    "size": tuple(shapes64.SIDES),
    "cell": shapes64.CELLS,
    "relation": shapes64.RELATIONS,
    "colour2": tuple(shapes64.COLOURS),  # of the second object
    "shape2": shapes64.SHAPES,
}
# With `layout_heads`, also what a two-object caption puts where: the colour and shape of the object at the top or
# on the left ("lead") and of the other one ("trail"). These follow from the other attributes, but a head that
# reads them off the end tokens makes the encoder hand the UNet the layout, not only the words.
LAYOUT_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "lead_colour": tuple(shapes64.COLOURS),
    "lead_shape": shapes64.SHAPES,
    "trail_colour": tuple(shapes64.COLOURS),
    "trail_shape": shapes64.SHAPES,
}
LEADING_FIRST = ("to the left of", "above")  # relations whose first object is the top or left one
IGNORE = -100  # cross-entropy's ignore_index: the caption does not say
HEAD_LR_SCALE = 10.0  # the attribute heads' learning rate, as a multiple of the towers'


def attribute_labels(captions: list[str], attributes: dict[str, tuple[str, ...]] = ATTRIBUTES) -> torch.Tensor:
    """(N, len(attributes)) class indices of what each caption says; IGNORE where it says nothing."""
    rows = []
    for text in captions:
        spec = parse_prompt(text)
        first = spec.objects[0]
        second = spec.objects[1] if len(spec.objects) == 2 else None
        said = {"background": spec.background, "colour": first.colour, "shape": first.shape, "size": first.size,
                "cell": first.cell, "relation": spec.relation,
                "colour2": second and second.colour, "shape2": second and second.shape}
        if second is not None:
            lead, trail = (first, second) if spec.relation in LEADING_FIRST else (second, first)
            said.update({"lead_colour": lead.colour, "lead_shape": lead.shape,
                         "trail_colour": trail.colour, "trail_shape": trail.shape})
        rows.append([values.index(said[k]) if said.get(k) else IGNORE for k, values in attributes.items()])
    return torch.tensor(rows, dtype=torch.long)


class AttributeHeads(torch.nn.Module):
    """One linear classifier per attribute on the text tower's pooled output (training only; not exported)."""

    def __init__(self, hidden_size: int, attributes: dict[str, tuple[str, ...]] = ATTRIBUTES):
        super().__init__()
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(hidden_size, len(v)) for k, v in attributes.items()})

    def forward(self, pooled: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean cross-entropy over the attributes captions name, per-attribute accuracy (len(attributes),))."""
        losses, accuracy = [], []
        for i, head in enumerate(self.heads.values()):
            target = labels[:, i]
            known = target != IGNORE
            if not known.any():
                accuracy.append(torch.tensor(float("nan")))
                continue
            logits = head(pooled[known])
            losses.append(torch.nn.functional.cross_entropy(logits, target[known]))
            accuracy.append((logits.argmax(1) == target[known]).float().mean().detach().cpu())
        return torch.stack(losses).mean(), torch.stack(accuracy)

"""Evaluation of generated images against their prompts, from pixels only.

`generator.evaluation.attributes` checks shapes64 images (see docs/shapes64.md) attribute by
attribute: background, colour, shape, size, position and relation.
"""

from generator.evaluation.attributes import (
    AccuracyReport,
    Component,
    Measurement,
    ObjectSpec,
    PromptSpec,
    Verdict,
    accuracy,
    check,
    evaluate,
    measure,
    parse_prompt,
)

__all__ = [
    "AccuracyReport",
    "Component",
    "Measurement",
    "ObjectSpec",
    "PromptSpec",
    "Verdict",
    "accuracy",
    "check",
    "evaluate",
    "measure",
    "parse_prompt",
]

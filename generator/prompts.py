"""A1111's prompt weighting and long prompts: `(word:1.3)`, `(word)`, `[word]`, `BREAK`, and 75-token windows.

    parse_weights("a (red:1.3) cat, [blurry]")  # [("a ", 1.0), ("red", 1.3), (" cat, ", 1.0), ("blurry", 0.909…)]

Syntax, as in A1111 (stable-diffusion-webui's "Original" emphasis):
- `(text)` multiplies the weight of `text` by 1.1, `[text]` divides it by 1.1, `(text:1.3)` sets the factor 1.3 for
  the group; nested groups multiply. `\\(`, `\\)`, `\\[`, `\\]` and `\\\\` are literal characters (a backslash
  before anything else is a literal backslash).
- `BREAK` (uppercase, a word of its own) ends the current window, so what follows starts a new one.
- A prompt longer than one window (the tokenizer's `model_max_length` - 2: 75 tokens for SD) is cut into windows;
  a window that fills up is cut after its last comma when that comma is among its last 20 tokens (A1111's
  `comma_padding_backtrack`; in proportion for shorter windows), else where it is full. Each window is encoded
  alone as [BOS] + tokens + [EOS] + padding, and the windows' hidden states are concatenated: (1, W × L, D).
- Weighting: each token's hidden state is multiplied by its weight, then the window is scaled so that its mean is
  the unweighted one (the overall magnitude the UNet was trained on stays; only the emphasis moves). Unlike A1111,
  that scale is clamped to [1/max|w|, 1/min|w|], where it lies whenever the mean means anything (see
  `encode_weighted`); A1111 divides by whatever the weighted mean is, however close to zero.

Where this differs from A1111, it refuses rather than guesses, so a typo is a 400 and not a silently odd image:
- Unbalanced brackets (an unclosed `(` or `[`, a stray `)` or `]`) raise PromptSyntaxError; A1111 keeps a stray
  closing bracket as text and closes open groups at the end. Write `\\(` for a literal bracket.
- In a `( )` group a colon introduces the weight, so a group whose last colon is not followed by a number, as in
  `(a:b)` or `(a:1.2 b)`, raises (A1111 would read `a:b` as text at 1.1). A colon before the weight, as in
  `(12:30 pm:1.2)`, and colons outside brackets are literal.
- A colon directly in a `[ ]` group raises: A1111 reads `[from:to:when]` as prompt editing, which is not
  supported here. Alternation `[a|b]` is not supported either; its `|` is text.
- Two BREAKs in a row, or one at a window's start, make no empty window (A1111 would add one).

No torch import here, not even inside a function or under TYPE_CHECKING (import-linter counts both): the web
process checks prompts with this module before anything is queued, and must reach no torch. `encode_weighted` gets
its tensors from the tokenizer and the text encoder instead.
"""

from __future__ import annotations

import re
from typing import Any

MAX_CHUNKS = 8  # windows a prompt may take: 600 tokens for SD
ROUND, SQUARE = 1.1, 1 / 1.1  # the factors of `(x)` and `[x]`
COMMA_BACKTRACK = 20  # of 75 tokens: a full window is cut after a comma this close to its end
BREAK = ("BREAK", -1.0)  # the fragment that ends a window (A1111's marker; no text fragment can equal it)

_WEIGHT = re.compile(r":\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
_ESCAPES = {"\\(": "(", "\\)": ")", "\\[": "[", "\\]": "]", "\\\\": "\\"}


class PromptSyntaxError(ValueError):
    """A prompt's weighting syntax is malformed; the message names the character and its position (from 1)."""


def parse_weights(text: str) -> list[tuple[str, float]]:
    """The prompt as (text, weight) fragments in order, with BREAK as the fragment `BREAK`.

    Adjacent fragments of equal weight are merged; a prompt with no text gives [("", 1.0)].
    """
    fragments: list[list] = []  # [text, weight]; the weights are multiplied as groups close
    groups: list[tuple[str, int, int, int | None]] = []  # (bracket, position, first fragment, literal colon)
    buffer: list[str] = []

    def flush() -> None:
        if buffer:
            fragments.append(["".join(buffer), 1.0])
            buffer.clear()

    def close(factor: float) -> None:
        flush()
        for fragment in fragments[groups.pop()[2] :]:
            fragment[1] *= factor

    i = 0
    while i < len(text):
        char = text[i]
        if text[i : i + 2] in _ESCAPES:
            buffer.append(_ESCAPES[text[i : i + 2]])
            i += 2
            continue
        if char in "([":
            flush()
            groups.append((char, i, len(fragments), None))
        elif char in ")]":
            opening = "(" if char == ")" else "["
            if not groups or groups[-1][0] != opening:
                raise PromptSyntaxError(_unbalanced(text, i, groups))
            if groups[-1][3] is not None:
                raise PromptSyntaxError(
                    f"the ':' at character {groups[-1][3] + 1} is not followed by a weight: write "
                    f"(text:1.3), or put the colon outside the brackets"
                )
            close(ROUND if char == ")" else SQUARE)
        elif char == ":" and groups and groups[-1][0] == "[":
            raise PromptSyntaxError(
                f"':' at character {i + 1} inside '[': prompt editing [from:to:when] is not supported"
            )
        elif char == ":" and groups and (weight := _WEIGHT.match(text, i)):
            close(float(weight[1]))  # a colon before the weight, as in (12:30 pm:1.2), stays text
            i = weight.end()
            continue
        elif char == ":" and groups:
            groups[-1] = groups[-1][:3] + (i,)
            buffer.append(char)
        else:
            buffer.append(char)
        i += 1
    if groups:
        bracket, position = groups[-1][:2]
        raise PromptSyntaxError(f"'{bracket}' at character {position + 1} is never closed (write \\{bracket} for "
                                "a literal bracket)")
    flush()

    parsed: list[tuple[str, float]] = []
    for part, weight in fragments:
        for k, piece in enumerate(_BREAK.split(part)):
            if k:
                parsed.append(BREAK)
            if piece:
                parsed.append((piece, weight))
    merged: list[tuple[str, float]] = []
    for piece, weight in parsed:
        if merged and merged[-1] != BREAK and (piece, weight) != BREAK and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + piece, weight)
        else:
            merged.append((piece, weight))
    return merged or [("", 1.0)]


def _unbalanced(text: str, i: int, groups: list) -> str:
    if not groups:
        return f"'{text[i]}' at character {i + 1} closes no bracket (write \\{text[i]} for a literal bracket)"
    bracket, position = groups[-1][:2]
    return f"'{text[i]}' at character {i + 1} does not close the '{bracket}' at character {position + 1}"


def uses_syntax(text: str) -> bool:
    """True when the prompt has brackets, escapes or BREAK: anything that parses to other than itself at weight 1.

    Raises PromptSyntaxError for malformed syntax.
    """
    return parse_weights(text) != [(text, 1.0)]


def weights_record(text: str) -> list[list] | None:
    """The parsed fragments as the manifest records them, [[text, weight], ...]; None for a prompt with no syntax."""
    return [[piece, weight] for piece, weight in parse_weights(text)] if uses_syntax(text) else None


def chunk_tokens(text: str, tokenizer) -> list[tuple[list[int], list[float]]]:
    """The prompt's windows: each one's token ids (no BOS, EOS or padding) and their weights, at least one window."""
    window = tokenizer.model_max_length - 2
    backtrack = COMMA_BACKTRACK * window // 75
    comma = tokenizer(",", add_special_tokens=False).input_ids
    comma = comma[0] if len(comma) == 1 else None
    fragments = parse_weights(text)
    texts = [piece for piece in fragments if piece != BREAK]
    # verbose=False: no warning that a long prompt passes model_max_length; the windows take care of that.
    encoded = iter(tokenizer([t for t, _ in texts], add_special_tokens=False, verbose=False).input_ids if texts else [])

    chunks: list[tuple[list[int], list[float]]] = []
    tokens: list[int] = []
    weights: list[float] = []
    last_comma = -1
    for fragment in fragments:
        if fragment == BREAK:
            if tokens:
                chunks.append((tokens, weights))
            tokens, weights, last_comma = [], [], -1
            continue
        for token in next(encoded):
            if len(tokens) == window:
                cut = last_comma + 1 if last_comma >= 0 and window - last_comma <= backtrack else window
                chunks.append((tokens[:cut], weights[:cut]))
                tokens, weights, last_comma = tokens[cut:], weights[cut:], -1
            if token == comma:
                last_comma = len(tokens)
            tokens.append(token)
            weights.append(fragment[1])
    if tokens or not chunks:
        chunks.append((tokens, weights))
    return chunks


def check_prompt(text: str, tokenizer=None, max_chunks: int = MAX_CHUNKS, *, name: str = "prompt") -> None:
    """Raise PromptSyntaxError for malformed syntax, and (with a tokenizer) ValueError for more than `max_chunks`
    windows; messages begin with the field's `name`. Without a tokenizer only the syntax is checked, as the web
    process can."""
    try:
        parse_weights(text)
    except PromptSyntaxError as error:
        raise PromptSyntaxError(f"{name}: {error}") from None
    if tokenizer is None:
        return
    chunks = chunk_tokens(text, tokenizer)
    if len(chunks) > max_chunks:
        window = tokenizer.model_max_length - 2
        tokens = sum(len(ids) for ids, _ in chunks)
        raise ValueError(
            f"{name} is {tokens} tokens long, {len(chunks)} windows of {window}; this model takes at most "
            f"{max_chunks} windows ({max_chunks * window} tokens; longer prompts are rejected, not truncated)"
        )


def encode_weighted(text: str, tokenizer, text_encoder, device, dtype) -> Any:
    """A torch.Tensor (1, chunks × L, D) in `dtype`: each window's last hidden states (L = model_max_length),
    weighted, side by side."""
    length = tokenizer.model_max_length
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, weights, masks = [], [], []
    for tokens, token_weights in chunk_tokens(text, tokenizer):
        used = len(tokens) + 2
        ids.append([tokenizer.bos_token_id, *tokens, tokenizer.eos_token_id] + [pad] * (length - used))
        weights.append([1.0, *token_weights] + [1.0] * (length - used + 1))
        masks.append([1] * used + [0] * (length - used))  # what the tokenizer's attention_mask holds
    batch = tokenizer.pad({"input_ids": ids, "attention_mask": masks}, return_tensors="pt").to(device)  # (chunks, L)
    mask = batch.attention_mask if getattr(text_encoder.config, "use_attention_mask", False) else None
    hidden = text_encoder(batch.input_ids, attention_mask=mask)[0].float()  # (chunks, L, D)
    weights = hidden.new_tensor(weights)  # (chunks, L)
    weighted = hidden * weights[..., None]  # (chunks, L, D)
    # A1111: each window is scaled back to its unweighted mean. While the tokens' means share a sign, that scale
    # lies between 1/max|w| and 1/min|w|; the clamp keeps it there when the mean is about zero (a final layer norm
    # without bias, as a randomly initialised encoder's), where the quotient is noise. All weights 1: exactly 1.
    scale = hidden.mean(dim=(1, 2)) / weighted.mean(dim=(1, 2))  # (chunks,)
    low, high = 1 / weights.abs().amax(dim=1), 1 / weights.abs().amin(dim=1)
    scale = scale.nan_to_num(1.0).clamp(low, high)
    return (weighted * scale[:, None, None]).to(dtype).reshape(1, -1, hidden.shape[-1])  # (1, chunks × L, D)


def is_plain(text: str, tokenizer) -> bool:
    """No syntax and one window: the pipeline encodes such a prompt exactly as it always has."""
    return not uses_syntax(text) and len(chunk_tokens(text, tokenizer)) == 1

"""Text: the CLIP tokenizer (byte-pair merges learned here), tokenizing captions, and CLIP embeddings.

The one home of the tokenizer code: `generator.tiny` builds the tiny model's tokenizer with
`make_clip_tokenizer`, the CLIP training stage builds the built-in model's with `make_tokenizer`
(whole-word tokens for every shapes64 word), and the UNet stage, the evaluation and the text probe
pad captions with `tokenize` as the pipeline pads prompts. `image_embeddings` and `text_embeddings`
are the CLIP towers' unit-length projected outputs, shared by the CLIP stage's retrieval check and
the evaluation's features.

Importing this module imports no torch; its functions do, when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from generator.data import shapes64

if TYPE_CHECKING:
    import torch

# Words the tiny tokenizer learns merges for; any other text still tokenizes, byte by byte.
TOKENIZER_CORPUS = (
    "a an the small large red green blue yellow purple orange white black gray "
    "circle square triangle in on at of to above below left right top bottom center "
    "middle background photo of cat dog tree house car sky sea mountain painting "
    "portrait city night day sun moon flower river forest beautiful detailed"
)


def learn_bpe_merges(words: list[str], num_merges: int) -> list[tuple[str, str]]:
    """Byte-pair merges in CLIP's form (a word's last symbol ends in `</w>`), most frequent pair first.

    Ties go to the alphabetically first pair, so the same words always give the same merges.
    """
    counts: dict[tuple[str, ...], int] = {}
    for word in words:
        symbols = tuple(word[:-1]) + (word[-1] + "</w>",)
        counts[symbols] = counts.get(symbols, 0) + 1
    merges = []
    for _ in range(num_merges):
        pairs: dict[tuple[str, str], int] = {}
        for symbols, count in counts.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] = pairs.get(pair, 0) + count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        merged = {}
        for symbols, count in counts.items():
            out, i = [], 0
            while i < len(symbols):
                if symbols[i : i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] = count
        counts = merged
    return merges


def make_clip_tokenizer(corpus: str = TOKENIZER_CORPUS, num_merges: int = 400):
    """A `CLIPTokenizer` with merges learned from `corpus`; other text falls back to single bytes."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    merges = learn_bpe_merges(corpus.lower().split(), num_merges)
    # CLIP's vocabulary: every byte alone and as a word end, then each merge's result, then specials.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # a set: sort it for a stable vocabulary
    vocab: dict[str, int] = {}
    for token in alphabet + [ch + "</w>" for ch in alphabet]:
        vocab.setdefault(token, len(vocab))
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    for token in ["<|startoftext|>", "<|endoftext|>"]:
        vocab[token] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def shapes64_vocabulary() -> str:
    """Every word a shapes64 caption can use, once: the tokenizer learns a whole-word token for each."""
    words = ["a", "an", "on", "background"]
    words += [*shapes64.BACKGROUNDS, *shapes64.COLOURS, *shapes64.SHAPES, *shapes64.SIDES]
    for phrase in [*shapes64.POSITION_PHRASES.values(), *shapes64.RELATIONS]:
        words += phrase.split()
    return " ".join(dict.fromkeys(words))


def make_tokenizer(max_tokens: int, merges: int):
    """The built-in model's tokenizer: `make_clip_tokenizer` on the shapes64 vocabulary, `max_tokens` long."""
    tokenizer = make_clip_tokenizer(corpus=shapes64_vocabulary(), num_merges=merges)
    tokenizer.model_max_length = max_tokens
    return tokenizer


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids padded to the tokenizer's length, as the pipeline pads them (no attention mask)."""
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def image_embeddings(model, pixels: torch.Tensor) -> torch.Tensor:
    """Unit-length projected image embeddings (N, projection_dim) of [-1, 1] pixels (N, 3, 64, 64)."""
    import torch

    return torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)


def text_embeddings(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Unit-length projected text embeddings (N, projection_dim)."""
    import torch

    return torch.nn.functional.normalize(model.get_text_features(input_ids=input_ids).pooler_output, dim=-1)

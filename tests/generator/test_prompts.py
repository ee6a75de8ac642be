"""A1111 prompt weighting and long prompts (generator/prompts.py) on the tiny model: parsing, windows, pixels."""

import numpy as np
import pytest
import torch

from generator import GenerationRequest, generate, generate_one, pipeline, resolve_request
from generator.prompts import (
    BREAK,
    MAX_CHUNKS,
    PromptSyntaxError,
    check_prompt,
    chunk_tokens,
    encode_weighted,
    parse_weights,
    uses_syntax,
    weights_record,
)

LONG = "a red cat on a blue square, " * 14  # 112 tokens with the tiny tokenizer: windows of 72 (to a comma) and 40


def pixels(result) -> np.ndarray:
    return np.stack([np.asarray(image.image) for image in result.images])


@pytest.fixture
def fresh_cache(tiny_model):
    """Every prompt encoded anew, and nothing this test cached left for the next."""
    tiny_model.cache.pop("prompt_embeds", None)
    yield tiny_model
    tiny_model.cache.pop("prompt_embeds", None)


@pytest.mark.parametrize("text", ["a cat", "", "  ", "time: 12:30, a|b", "a \\q backslash", "BREAKFAST Break"])
def test_plain_text_parses_to_itself(text):
    assert parse_weights(text) == [(text, 1.0)] and not uses_syntax(text) and weights_record(text) is None


@pytest.mark.parametrize(
    "text, parsed",
    [
        ("a (red) cat", [("a ", 1.0), ("red", 1.1), (" cat", 1.0)]),
        ("[blurry]", [("blurry", 1 / 1.1)]),
        ("((red))", [("red", 1.1 * 1.1)]),
        ("[[red]]", [("red", 1 / 1.1 / 1.1)]),
        ("(red:1.3) cat", [("red", 1.3), (" cat", 1.0)]),
        ("(a (b):1.5) c", [("a ", 1.5), ("b", 1.1 * 1.5), (" c", 1.0)]),
        ("( red : 0.5 )", [(" red ", 0.5)]),
        ("(12:30 pm:1.2)", [("12:30 pm", 1.2)]),  # a colon before the weight is text
        ("(a)(b) [c][d]", [("ab", 1.1), (" ", 1.0), ("cd", 1 / 1.1)]),  # equal weights merge
        ("\\(x\\) \\[y\\] \\\\", [("(x) [y] \\", 1.0)]),
        ("()a[]", [("a", 1.0)]),
        ("a cat BREAK a dog", [("a cat", 1.0), BREAK, ("a dog", 1.0)]),
        ("(a BREAK b:2)", [("a", 2.0), BREAK, ("b", 2.0)]),
    ],
)
def test_weights_follow_a1111(text, parsed):
    got = parse_weights(text)
    assert [t for t, _ in got] == [t for t, _ in parsed]
    assert [w for _, w in got] == pytest.approx([w for _, w in parsed])
    assert uses_syntax(text) and weights_record(text) == [list(p) for p in got]


@pytest.mark.parametrize(
    "text, message",
    [
        ("a (cat", r"'\(' at character 3 is never closed"),
        ("((a)", r"'\(' at character 1 is never closed"),
        ("[a", r"'\[' at character 1 is never closed"),
        ("a cat :)", r"'\)' at character 8 closes no bracket"),
        ("x ] y", r"'\]' at character 3 closes no bracket"),
        ("(a]", r"'\]' at character 3 does not close the '\(' at character 1"),
        ("(a:b)", "the ':' at character 3 is not followed by a weight"),
        ("(a:1.2 b)", "the ':' at character 3 is not followed by a weight"),
        ("(a:)", "the ':' at character 3 is not followed by a weight"),
        ("[a:b:0.5]", "prompt editing"),
    ],
)
def test_bad_syntax_names_the_character(text, message):
    with pytest.raises(PromptSyntaxError, match=message):
        parse_weights(text)
    with pytest.raises(PromptSyntaxError, match="^negative_prompt: .*" + message):
        check_prompt(text, name="negative_prompt")  # no tokenizer: the web process's check


def test_windows_cut_after_a_late_comma_else_where_full(tiny_model):
    tokenizer = tiny_model.tokenizer
    late = chunk_tokens("cat " * 70 + ", " + "dog " * 10, tokenizer)
    assert [len(ids) for ids, _ in late] == [71, 10] and late[0][0][-1] == tokenizer(",").input_ids[1]
    early = chunk_tokens("cat " * 50 + ", " + "dog " * 30, tokenizer)  # the comma is 25 tokens from the end
    assert [len(ids) for ids, _ in early] == [75, 6]
    assert [len(ids) for ids, _ in chunk_tokens("cat BREAK BREAK dog BREAK", tokenizer)] == [1, 1]
    assert chunk_tokens("", tokenizer) == [([], [])]
    weights = chunk_tokens("cat (dog:1.5) [cat]", tokenizer)[0][1]
    assert weights == pytest.approx([1.0, 1.5, 1 / 1.1])


def test_long_prompt_windows_each_start_with_bos_and_end_with_eos_and_padding(tiny_model):
    tokenizer, length = tiny_model.tokenizer, tiny_model.tokenizer.model_max_length
    seen = []

    class Spy:  # the text encoder, recording the ids it is given
        config = tiny_model.text_encoder.config

        def __call__(self, ids, attention_mask=None):
            seen.append(ids)
            return tiny_model.text_encoder(ids, attention_mask=attention_mask)

    with torch.inference_mode():
        embeds = encode_weighted(LONG, tokenizer, Spy(), "cpu", torch.float32)
    (ids,) = seen
    tokens = [len(chunk) for chunk, _ in chunk_tokens(LONG, tokenizer)]
    assert ids.shape == (2, length) and embeds.shape == (1, 2 * length, tiny_model.text_encoder.config.hidden_size)
    for row, used in zip(ids.tolist(), tokens):
        assert row[0] == tokenizer.bos_token_id and row[used + 1] == tokenizer.eos_token_id
        assert row[used + 2 :] == [tokenizer.pad_token_id] * (length - used - 2)
    assert sum(tokens) == len(tokenizer(LONG).input_ids) - 2  # nothing dropped


def test_too_many_windows_are_refused_with_the_count(tiny_model):
    check_prompt(LONG, tiny_model.tokenizer)
    with pytest.raises(ValueError, match=r"prompt is 112 tokens long, 2 windows of 75; this model takes at most 1"):
        check_prompt(LONG, tiny_model.tokenizer, max_chunks=1)
    too_long = "red " * (75 * MAX_CHUNKS + 1)
    with pytest.raises(ValueError, match=r"negative_prompt is 601 tokens long, 9 windows"):
        resolve_request(tiny_model, GenerationRequest(prompt="a cat", negative_prompt=too_long))
    with pytest.raises(PromptSyntaxError, match=r"prompt: '\(' at character 3"):
        resolve_request(tiny_model, GenerationRequest(prompt="a (cat"))


def _old_encode_prompt(prompt, model):
    """The pipeline's encoding before weighting, kept here to prove plain prompts did not change."""
    length = model.tokenizer.model_max_length
    tokens = model.tokenizer([prompt], padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return model.text_encoder(tokens.input_ids.to(model.device))[0].to(model.dtype)


def test_plain_prompt_keeps_its_embedding_and_pixels(fresh_cache, monkeypatch):
    model = fresh_cache
    request = GenerationRequest(prompt="a red cat", negative_prompt="blurry", steps=2, seed=3)
    with torch.inference_mode():
        old = _old_encode_prompt("a red cat", model)
        assert torch.equal(pipeline.encode_prompts(["a red cat"], model), old)
        explicit = pipeline.encode_prompts(["(a red cat:1.0)"], model)
    assert torch.equal(explicit, old)  # a weight of 1, written out, is the plain prompt
    new = generate_one(model, request)
    model.cache.pop("prompt_embeds")
    monkeypatch.setattr(pipeline, "_encode_prompt", _old_encode_prompt)
    assert np.array_equal(pixels(generate_one(model, request)), pixels(new))
    assert "prompt_weights" not in new.images[0].manifest and "negative_prompt_weights" not in new.images[0].manifest


def test_weighted_prompt_changes_the_image_reproducibly_and_is_recorded(fresh_cache):
    model = fresh_cache
    plain = generate_one(model, GenerationRequest(prompt="a red cat", steps=2, seed=3))
    request = GenerationRequest(prompt="a (red:1.5) cat", negative_prompt="[blurry]", steps=2, seed=3)
    weighted = generate_one(model, request)
    model.cache.pop("prompt_embeds")  # encoded again, not taken from the cache
    again = generate_one(model, request)
    assert not np.array_equal(pixels(weighted), pixels(plain))
    assert np.array_equal(pixels(again), pixels(weighted))
    manifest = weighted.images[0].manifest
    assert manifest["prompt"] == "a (red:1.5) cat"
    assert manifest["prompt_weights"] == [["a ", 1.0], ["red", 1.5], [" cat", 1.0]]
    assert manifest["negative_prompt_weights"] == [["blurry", pytest.approx(1 / 1.1)]]


def test_long_prompt_with_a_short_negative_generates_and_never_shares_a_batch_with_a_plain_one(fresh_cache):
    model = fresh_cache
    length = model.tokenizer.model_max_length
    shapes = []
    long, plain = (GenerationRequest(prompt=LONG, negative_prompt="blurry", steps=2, seed=1),
                   GenerationRequest(prompt="a cat", steps=2, seed=2))
    (result,) = generate(model, [long], callback=lambda state: shapes.append(tuple(state.prompt_embeds.shape)))
    assert len(result.images) == 1
    assert shapes[0] == (1, 2 * length, model.text_encoder.config.hidden_size)  # two windows; the negative padded
    # Batched, the plain prompt would be padded to two windows: its pixels would depend on its batch mate.
    assert pipeline.prompt_windows(model, long) == (2, 1) and pipeline.prompt_windows(model, plain) == (1, 1)
    with pytest.raises(ValueError, match="as many windows"):
        generate(model, [long, plain])
    with torch.inference_mode():  # the shorter rows are padded with the empty prompt's window
        embeds = pipeline.encode_prompts(["a cat", LONG], model)
        empty, plain = _old_encode_prompt("", model), _old_encode_prompt("a cat", model)
    assert torch.equal(embeds[0, :length], plain[0]) and torch.equal(embeds[0, length:], empty[0])


def test_a_compiled_bucket_runs_eager_for_another_context_length(tiny_model):
    """A graph compiled for one window's context is not given a long prompt's: torch.compile would compile again, in
    the request's time, for every new T. The stand-in graph records its calls (the openvino backend: nothing is
    compiled or converted until compile_for)."""
    from generator.fastpath import BucketedUNet

    unet = BucketedUNet(tiny_model.unet, backend="openvino")
    length, width = tiny_model.tokenizer.model_max_length, tiny_model.text_encoder.config.hidden_size
    calls = []

    def graph(sample, timestep, context):
        calls.append(context.shape[1])
        return unet.eager(sample, timestep, encoder_hidden_states=context, return_dict=False)[0]

    unet.graphs[("unet", 2, 16, 16)] = graph
    unet.context_tokens[("unet", 2, 16, 16)] = length
    sample = torch.randn(2, 4, 16, 16)
    with torch.inference_mode():
        for tokens in (length, 2 * length):
            out = unet(sample, 10, encoder_hidden_states=torch.randn(2, tokens, width), return_dict=False)[0]
            assert out.shape == sample.shape
    assert calls == [length]

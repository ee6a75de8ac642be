import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from generator.data.shapes64 import render, validation_prompt_sets
from generator.evaluate import main as evaluate_main
from generator.evaluation.classifier import (
    HEADS,
    cached_classifier,
    labels_of,
    load_classifier,
    read_classifier_info,
    save_classifier,
    train_classifier,
)
from generator.evaluation.features import InceptionFeatures
from generator.evaluation.image_sets import real_set
from generator.sweep import main as sweep_main

RUN = ["--prompts", "2", "--images-per-prompt", "1", "--steps", "1", "--batch", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def classifier_path(tmp_path_factory):
    """A classifier trained for a few steps only: the evaluation must not train the real one in tests."""
    path = tmp_path_factory.mktemp("classifier") / "classifier.safetensors"
    save_classifier(train_classifier(steps=2, batch_size=8), path, {"training": {"steps": 2}})
    return path


@pytest.fixture(scope="module")
def clip_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model plus a tiny random `clip/` (both towers), with the CLIP stage's own tokenizer beside it."""
    from generator.text import make_tokenizer
    from generator.train.clip import make_clip
    from generator.train.config import ClipConfig

    path = tmp_path_factory.mktemp("models") / "tiny-clip"
    shutil.copytree(tiny_model_dir, path)
    tokenizer = make_tokenizer(24, 300)
    torch.manual_seed(0)
    clip = make_clip(ClipConfig(hidden_size=32, layers=1, heads=2, projection_dim=16), tokenizer)
    clip.save_pretrained(path / "clip")
    tokenizer.save_pretrained(path / "clip")
    return path


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


# --- Classifier ---------------------------------------------------------------------------------


def test_classifier_probabilities_have_one_row_per_image_and_sum_to_one():
    model = train_classifier(steps=2, batch_size=4, seed=0)
    images = np.stack([np.asarray(render(case.scene)) for case in validation_prompt_sets(count=3)["single"]])
    probabilities = model.probabilities(images)
    assert probabilities.shape == (3, 18) == (3, len(HEADS["colour_shape"]))
    assert np.all(probabilities >= 0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)
    assert model.probabilities(images, head="cell").shape == (3, 9)
    predictions = model.predict(images)
    assert set(predictions) == set(HEADS) and all(len(v) == 3 for v in predictions.values())
    with pytest.raises(ValueError, match="uint8 images of shape"):
        model.probabilities(images[:, :32])
    with pytest.raises(ValueError, match="unknown head"):
        model.probabilities(images, head="texture")


def test_classifier_training_is_deterministic_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = train_classifier(steps=2, batch_size=4, seed=5)
    assert torch.rand(1) == before
    second = train_classifier(steps=2, batch_size=4, seed=5)
    other = train_classifier(steps=2, batch_size=4, seed=6)
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name]), name
    assert any(not torch.equal(v, other.state_dict()[k]) for k, v in first.state_dict().items())


def test_classifier_save_load_round_trips(tmp_path):
    model = train_classifier(steps=1, batch_size=4)
    path = save_classifier(model, tmp_path / "c.safetensors", {"training": {"steps": 1}})
    loaded = load_classifier(path)
    images = np.stack([np.asarray(render(case.scene)) for case in validation_prompt_sets(count=2)["held_out"]])
    np.testing.assert_array_equal(model.probabilities(images), loaded.probabilities(images))
    info = read_classifier_info(path)
    assert info["training"] == {"steps": 1} and info["classes"]["colour_shape"][0] == "red circle"


def test_cached_classifier_trains_once_then_loads(tmp_path):
    path = tmp_path / "eval" / "classifier.safetensors"
    first = cached_classifier(path, steps=1, batch_size=4, validation_images=50)
    info = read_classifier_info(path)
    assert info["training"]["steps"] == 1 and info["validation_images"] == 50
    assert set(info["validation_accuracy"]) == set(HEADS)
    assert all(0 <= v <= 1 for v in info["validation_accuracy"].values())
    stamp = path.stat().st_mtime_ns
    second = cached_classifier(path, steps=1000)  # the file is there: loaded, not retrained
    assert path.stat().st_mtime_ns == stamp
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name])


def test_labels_come_from_the_scene():
    case = validation_prompt_sets(count=1)["single"][0]
    labels = labels_of(case.scene)
    (obj,) = case.scene.objects
    assert HEADS["colour_shape"][labels["colour_shape"]] == f"{obj.colour} {obj.shape}"
    assert HEADS["cell"][labels["cell"]] == obj.cell
    assert HEADS["background"][labels["background"]] == case.scene.background
    with pytest.raises(ValueError, match="one-object"):
        labels_of(validation_prompt_sets(count=1)["relation"][0].scene)


# --- Evaluation ---------------------------------------------------------------------------------


def test_real_sets_are_disjoint_draws_of_the_evaluation_mixture():
    real_a, seeds_a = real_set(100, 9, 2)
    real_b, seeds_b = real_set(200, 9, 2)
    assert real_a.images.shape == (9, 64, 64, 3) and real_a.images.dtype == np.uint8
    assert seeds_a == [100, 101] and seeds_b == [200, 201]
    assert real_a.sets[:6] == ["single"] * 2 + ["held_out"] * 2 + ["relation"] * 2
    assert not np.array_equal(real_a.images, real_b.images)


def test_evaluate_without_clip_reports_accuracy_is_and_speed(tiny_model_dir, classifier_path, tmp_path, monkeypatch):
    out = tmp_path / "report"
    argv = ["--model", str(tiny_model_dir), "--out", str(out), *RUN, "--classifier", str(classifier_path)]
    assert evaluate_main(argv) == 0

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["command"].startswith("python -m generator.evaluate --model")
    assert len(report["model"]["hash"]) == 64
    assert report["settings"]["steps"] == 1 and report["settings"]["width"] == 64
    assert report["counts"] == {"generated": 6, "real_a": 6, "real_b": 6}
    metrics = report["metrics"]
    for key in ("fid_clip", "kid_clip", "clip_score"):
        assert metrics[key]["model"] is None and "clip" in metrics[key]["note"]
    assert metrics["fid_inception"]["model"] is None and "not available" in metrics["fid_inception"]["note"]
    for who in ("model", "real"):
        score = metrics["inception_score"][who]
        assert _finite(score["mean"]) and 1 <= score["mean"] <= 18
    assert set(report["accuracy"]) == {"single", "held_out", "relation", "all"}
    for entry in report["accuracy"].values():
        assert 0 <= entry["model"]["overall"] <= 1
        assert entry["real"]["overall"] == 1.0  # the checker reads real renders correctly
    assert report["accuracy"]["all"]["model"]["count"] == 6
    assert "relation" in report["accuracy"]["relation"]["model"]["per_attribute"]
    speed = report["speed"]
    assert _finite(speed["seconds_per_image"]) and speed["seconds_per_image"] > 0 and speed["images"] == 6
    assert report["classifier"]["training"] == {"steps": 2}

    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "| metric | model | real-vs-real noise floor |" in markdown
    assert "seconds per image" in markdown and "does not exist" in markdown
    assert sum(row["images"] for row in report["relations"].values()) == 2
    assert "| relation | images | all right | objects right |" in markdown
    assert sum(row["images"] for row in report["held_out_pairs"].values()) == 2
    assert "| pair | images | all right | drawn as |" in markdown
    for name in ("single", "held_out", "relation"):
        with Image.open(out / f"grid_{name}.png") as grid:
            grid.load()
            assert grid.width >= 128 and grid.height >= 128


def test_evaluate_with_clip_reports_fid_kid_and_clip_score(clip_model_dir, classifier_path, tmp_path, monkeypatch):
    out = tmp_path / "report"
    argv = ["--model", str(clip_model_dir), "--out", str(out), *RUN, "--classifier", str(classifier_path)]
    assert evaluate_main(argv) == 0

    metrics = json.loads((out / "report.json").read_text(encoding="utf-8"))["metrics"]
    for who in ("model", "real"):
        assert _finite(metrics["fid_clip"][who]) and metrics["fid_clip"][who] >= 0
        assert _finite(metrics["kid_clip"][who]["mean"]) and _finite(metrics["kid_clip"][who]["std"])
        assert _finite(metrics["clip_score"][who]) and 0 <= metrics["clip_score"][who] <= 100
    assert metrics["fid_inception"]["model"] is None
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "(real B vs real A)" in markdown and "(real A with its prompts)" in markdown


def test_evaluate_prompt_seed_picks_another_prompt_set(tiny_model_dir, classifier_path, tmp_path):
    """Sampling settings are tuned on prompts of another seed than the reported figures' (seed 0)."""
    reports = {}
    for seed in (0, 7):
        out = tmp_path / f"seed-{seed}"
        argv = ["--model", str(tiny_model_dir), "--out", str(out), *RUN, "--classifier", str(classifier_path)]
        assert evaluate_main([*argv, "--prompt-seed", str(seed)]) == 0
        reports[seed] = json.loads((out / "report.json").read_text(encoding="utf-8"))
        assert reports[seed]["settings"]["prompt_seed"] == seed
        assert f"(prompt seed {seed})" in (out / "report.md").read_text(encoding="utf-8")
    prompts = {seed: report["prompts"] for seed, report in reports.items()}
    for seed in (0, 7):
        expected = validation_prompt_sets(seed=seed, count=2)
        assert prompts[seed] == {name: [case.prompt for case in cases] for name, cases in expected.items()}
    assert prompts[0] != prompts[7]


def test_evaluate_rejects_a_missing_model_and_bad_counts(tmp_path, capsys):
    assert evaluate_main(["--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        evaluate_main(["--model", str(tmp_path), "--out", str(tmp_path / "out"), "--images-per-prompt", "0"])


def test_inception_features_are_never_downloaded(tmp_path):
    network, note = InceptionFeatures.from_path(None)
    assert network is None and "not available: pass --inception-weights" in note
    network, note = InceptionFeatures.from_path(tmp_path / "missing.pth")
    assert network is None and "is not a file" in note
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    network, note = InceptionFeatures.from_path(tmp_path / "junk.pth")
    assert network is None and note.startswith("not available")


# --- Sweep --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sweep_writes_its_table_and_plot(clip_model_dir, tmp_path):
    out = tmp_path / "sweep"
    argv = ["--model", str(clip_model_dir), "--out", str(out), "--schedulers", "ddim,euler", "--steps", "1,2"]
    assert sweep_main([*argv, "--guidance", "4", "--prompts", "2", "--batch", "8", "--device", "cpu",
                       "--prompt-seed", "3"]) == 0

    sweep = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    assert sweep["settings"]["prompt_seed"] == 3
    assert _finite(sweep["fid_noise_floor"])
    assert [(r["scheduler"], r["steps"], r["guidance_scale"]) for r in sweep["results"]] == [
        ("ddim", 1, 4.0),
        ("ddim", 2, 4.0),
        ("euler", 1, 4.0),
        ("euler", 2, 4.0),
    ]
    for row in sweep["results"]:
        assert row["status"] == "ok"
        assert _finite(row["fid_clip"]) and row["seconds_per_image"] > 0
        assert set(row["accuracy"]) == {"single", "held_out", "relation", "all"}
    table = (out / "sweep.md").read_text(encoding="utf-8")
    assert table.count("\n| ddim |") == 2 and table.count("\n| euler |") == 2
    assert "(prompt seed 3)" in table
    with Image.open(out / "sweep.png") as plot:
        plot.load()
        assert plot.format == "PNG" and plot.width > 300


def test_sweep_skips_what_a_scheduler_refuses(tiny_model_dir, tmp_path):
    model = tmp_path / "zero-snr"
    shutil.copytree(tiny_model_dir, model)
    config_path = model / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config_path.write_text(json.dumps({**config, "rescale_betas_zero_snr": True}))

    out = tmp_path / "sweep"
    argv = ["--model", str(model), "--out", str(out), "--schedulers", "pndm", "--steps", "1", "--guidance", "4"]
    assert sweep_main([*argv, "--prompts", "1", "--device", "cpu"]) == 0
    sweep = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    (row,) = sweep["results"]
    assert row["status"] == "skipped" and "zero-terminal-SNR" in row["note"]
    assert sweep["fid_noise_floor"] is None
    assert "skipped: " in (out / "sweep.md").read_text(encoding="utf-8")
    assert (out / "sweep.png").is_file()


def test_relation_breakdown_tells_binding_from_placement():
    """Real renders are right in every column; the same render under the opposite relation word keeps both objects
    right and loses only the relation."""
    from generator.evaluation.image_sets import ImageSet
    from generator.evaluation.report import relation_breakdown, verdicts_of

    opposite = {"above": "below", "below": "above", "to the left of": "to the right of",
                "to the right of": "to the left of"}
    cases = validation_prompt_sets(count=8)["relation"]
    images, prompts = [], []
    for case in cases:
        image = np.asarray(render(case.scene).convert("RGB"))
        relation = case.scene.relation
        images += [image, image]
        prompts += [case.prompt, case.prompt.replace(f" {relation} ", f" {opposite[relation]} ")]
    image_set = ImageSet(np.stack(images), prompts, ["relation"] * len(prompts))
    table = relation_breakdown(image_set, verdicts_of(image_set))
    assert sum(row["images"] for row in table.values()) == 16
    assert sum(row["objects_right"] for row in table.values()) == 16
    assert sum(row["correct"] for row in table.values()) == 8
    assert sum(row["relation_right"] for row in table.values()) == 8
    assert sum(row["relation_right_where_objects_right"] for row in table.values()) == 8
    assert set(table) <= set(opposite)


def test_held_out_breakdown_names_what_was_drawn_instead():
    """Each held-out prompt with its own render is right and drawn as asked; with the render of another pair's
    prompt it is wrong, and the table says which pair was drawn."""
    from generator.evaluation.image_sets import ImageSet
    from generator.evaluation.report import held_out_breakdown, verdicts_of

    cases = validation_prompt_sets(count=12)["held_out"]
    pair = {case.prompt: " ".join((case.scene.objects[0].colour, case.scene.objects[0].shape)) for case in cases}
    images, prompts, swapped = [], [], {}
    for case in cases:
        other = next(c for c in cases if pair[c.prompt] != pair[case.prompt])
        images += [np.asarray(render(case.scene).convert("RGB")), np.asarray(render(other.scene).convert("RGB"))]
        prompts += [case.prompt, case.prompt]
        swapped.setdefault(pair[case.prompt], []).append(pair[other.prompt])
    image_set = ImageSet(np.stack(images), prompts, ["held_out"] * len(prompts))
    table = held_out_breakdown(image_set, verdicts_of(image_set))
    assert set(table) == set(pair.values()) and len(table) == 3
    for name, row in table.items():
        n = len(swapped[name])
        assert row["images"] == 2 * n and row["correct"] == n
        expected = {name: n}
        for other in swapped[name]:
            expected[other] = expected.get(other, 0) + 1
        assert row["drawn_as"] == dict(sorted(expected.items(), key=lambda item: (-item[1], item[0])))

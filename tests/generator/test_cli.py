from generator.__main__ import main
from generator.pngmeta import read_manifest


def test_cli_generates_pngs(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out" / "image.png"
    code = main(
        [
            "generate",
            "--model",
            str(tiny_model_dir),
            "--prompt",
            "a red circle",
            "--steps",
            "2",
            "--seed",
            "11",
            "--num-images",
            "2",
            "--scheduler",
            "euler",
            "--width",
            "16",
            "--height",
            "24",
            "--save-intermediates",
            str(tmp_path / "steps"),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    paths = [tmp_path / "out" / "image-0.png", tmp_path / "out" / "image-1.png"]
    assert [read_manifest(p.read_bytes())["seed"] for p in paths] == [11, 12]
    assert read_manifest(paths[0].read_bytes())["width"] == 16
    assert sorted(p.name for p in (tmp_path / "steps").iterdir())[:3] == [
        "step-0001-0.png",
        "step-0001-1.png",
        "step-0001.pt",
    ]


def test_cli_reports_bad_input_without_a_traceback(tiny_model_dir, tmp_path, capsys):
    code = main(
        ["generate", "--model", str(tiny_model_dir), "--prompt", "x", "--width", "33", "--out", str(tmp_path / "x.png")]
    )
    assert code == 2
    assert "width must be a multiple of 2" in capsys.readouterr().err


def test_cli_makes_a_tiny_model(tmp_path):
    assert main(["make-tiny", "--out", str(tmp_path / "m"), "--sample-size", "16"]) == 0
    assert (tmp_path / "m" / "model_index.json").is_file()


def test_cli_fewer_evaluations(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "fewer.png"
    common = ["generate", "--model", str(tiny_model_dir), "--prompt", "a red circle", "--steps", "4", "--seed", "3"]
    assert main([*common, "--guidance-cutoff", "0.5", "--deep-cache-interval", "2", "--out", str(out)]) == 0
    manifest = read_manifest(out.read_bytes())
    assert (manifest["guidance_cutoff"], manifest["deep_cache_interval"]) == (0.5, 2)
    assert main([*common, "--deep-cache-interval", "0", "--out", str(out)]) == 2
    assert "deep_cache_interval must be an integer from 1 to 10" in capsys.readouterr().err

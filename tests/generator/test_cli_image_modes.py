"""`python -m generator generate` with an init image, a mask, a variation seed and the hires fix."""

import numpy as np
from PIL import Image

from generator.__main__ import main
from generator.pngmeta import read_manifest


def write_inputs(tmp_path):
    init = tmp_path / "init.jpg"
    Image.fromarray(np.linspace(0, 255, 48 * 64 * 3).reshape(48, 64, 3).astype(np.uint8)).save(init)
    mask = tmp_path / "mask.png"  # transparent = repaint: the centre
    rgba = np.zeros((48, 64, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[16:32, 24:40, 3] = 0
    Image.fromarray(rgba, "RGBA").save(mask)
    return init, mask


def test_cli_inpaints_a_fitted_image_with_variation_and_records_it(tiny_model_dir, tmp_path):
    init, mask = write_inputs(tmp_path)
    out = tmp_path / "out.png"
    code = main([
        "generate", "--model", str(tiny_model_dir), "--prompt", "a red circle", "--steps", "4", "--seed", "3",
        "--width", "32", "--height", "32", "--init-image", str(init), "--mask", str(mask), "--strength", "0.8",
        "--mask-blur", "2", "--resize-mode", "crop_and_resize", "--subseed", "9", "--subseed-strength", "0.3",
        "--out", str(out),
    ])
    assert code == 0
    manifest = read_manifest(out.read_bytes())
    assert manifest["mode"] == "inpaint" and manifest["strength"] == 0.8 and manifest["mask_blur"] == 2
    assert manifest["subseed"] == 9 and manifest["subseed_strength"] == 0.3
    assert Image.open(out).size == (32, 32)


def test_cli_hires_fix_writes_the_larger_image(tiny_model_dir, tmp_path):
    out = tmp_path / "big.png"
    code = main([
        "generate", "--model", str(tiny_model_dir), "--prompt", "a red circle", "--steps", "2", "--seed", "3",
        "--hires-scale", "2", "--hires-steps", "2", "--hires-strength", "0.5", "--hires-upscaler", "lanczos",
        "--out", str(out),
    ])
    assert code == 0
    assert Image.open(out).size == (64, 64)
    assert read_manifest(out.read_bytes())["hires_upscaler"] == "lanczos"


def test_cli_refuses_a_mask_without_an_image_and_an_unreadable_image(tiny_model_dir, tmp_path, capsys):
    _, mask = write_inputs(tmp_path)
    base = ["generate", "--model", str(tiny_model_dir), "--prompt", "x", "--out", str(tmp_path / "x.png")]
    assert main([*base, "--mask", str(mask)]) == 2
    assert "--mask needs --init-image" in capsys.readouterr().err
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    assert main([*base, "--init-image", str(broken)]) == 2
    assert "error:" in capsys.readouterr().err

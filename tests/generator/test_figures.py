import numpy as np
import pytest
import torch
from PIL import Image

from generator.evaluation.figures import (
    SCHEDULES,
    alphas_cumprod,
    denoising_trajectory,
    guidance_images,
    main,
    noise_image,
)
from generator.pipeline import GenerationRequest, predict_original

FIGURES = ("forward_noising.png", "noise_schedules.png", "denoising_trajectory.png", "guidance_strip.png")


def test_command_writes_the_four_figures(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "figures"
    code = main(
        ["--model", str(tiny_model_dir), "--out", str(out), "--steps", "2", "--guidance-scales", "1", "4", "7.5"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    for name in FIGURES:
        assert f"wrote {out / name}" in printed
        with Image.open(out / name) as image:
            assert image.format == "PNG"
            width, height = image.size
            image.load()  # decodes every pixel: a truncated file raises here
        assert 300 <= width <= 4000 and 200 <= height <= 4000, (name, image.size)


def test_command_rejects_a_missing_model_folder(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_schedules_come_from_diffusers():
    linear = alphas_cumprod("linear 1e-4–0.02 (DDPM)")
    assert linear.shape == (1000,)
    assert linear[0] == pytest.approx(1 - 1e-4)
    assert linear[-1] == pytest.approx(np.prod(1 - np.linspace(1e-4, 0.02, 1000)), rel=1e-4)
    sd = alphas_cumprod("scaled_linear 0.00085–0.012 (SD)")
    assert np.sqrt(sd[-1]) == pytest.approx(0.068, abs=0.001)  # SD's last step keeps signal
    for schedule in SCHEDULES:
        alpha_bar = alphas_cumprod(schedule)
        assert np.all(np.diff(alpha_bar) < 0) and alpha_bar[0] > 0.999
        if "zero SNR" in schedule:
            assert alpha_bar[-1] == 0
        else:
            assert alpha_bar[-1] > 0
    with pytest.raises(ValueError, match="known schedules"):
        alphas_cumprod("karras")


def test_noise_image_is_x0_at_alpha_bar_one_and_pure_noise_at_the_zero_snr_end():
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (64, 64, 3))
    noise = rng.standard_normal(x0.shape)
    np.testing.assert_array_equal(noise_image(x0, 1.0, noise), x0)

    end = noise_image(x0, float(alphas_cumprod("scaled_linear 0.00085–0.012, zero SNR")[-1]), noise)
    assert abs(end.mean()) < 0.05 and end.std() == pytest.approx(1, abs=0.05)
    assert abs(np.corrcoef(end.ravel(), x0.ravel())[0, 1]) < 0.05  # nothing of x0 is left
    # Without the rescaling the last step still correlates with x0.
    kept = noise_image(x0, float(alphas_cumprod("scaled_linear 0.00085–0.012 (SD)")[-1]), noise)
    assert np.corrcoef(kept.ravel(), x0.ravel())[0, 1] > 0.02

    with pytest.raises(ValueError, match="alpha_bar"):
        noise_image(x0, 1.5, noise)


def test_noise_image_moments_follow_alpha_bar():
    x0 = np.full((200, 200, 3), 0.8)  # a flat image: x_t's mean and std over pixels are those of q(x_t | x0)
    noise = np.random.default_rng(1).standard_normal(x0.shape)
    for alpha_bar in (0.9, 0.5, 0.1):
        x_t = noise_image(x0, alpha_bar, noise)
        assert x_t.mean() == pytest.approx(np.sqrt(alpha_bar) * 0.8, abs=0.01)
        assert x_t.std() == pytest.approx(np.sqrt(1 - alpha_bar), rel=0.01)


def test_predict_original_inverts_the_forward_process():
    generator = torch.Generator().manual_seed(0)
    x0, eps = torch.randn((2, 1, 4, 8, 8), generator=generator)
    alpha_bar = 0.3
    a, s = alpha_bar**0.5, (1 - alpha_bar) ** 0.5
    x_t = a * x0 + s * eps
    torch.testing.assert_close(predict_original(x_t, eps, alpha_bar, "epsilon"), x0)
    torch.testing.assert_close(predict_original(x_t, a * eps - s * x0, alpha_bar, "v_prediction"), x0)
    with pytest.raises(ValueError, match="epsilon, v_prediction, sample"):
        predict_original(x_t, eps, alpha_bar, "flow")


def test_trajectory_and_guidance_strip_share_the_generation(tiny_model):
    request = GenerationRequest("a large red circle in the center on a white background", seed=5, steps=3)
    snapshots, final, resolved = denoising_trajectory(tiny_model, request, snapshots=6)
    assert [s.step for s in snapshots] == [1, 2, 3]  # no more snapshots than steps
    assert snapshots[0].timestep > snapshots[-1].timestep
    side = tiny_model.defaults.width
    assert all(s.noisy.size == s.predicted.size == (side, side) for s in snapshots)

    images, requests = guidance_images(tiny_model, resolved, [1.0, resolved.guidance_scale])
    assert [r.guidance_scale for r in requests] == [1.0, resolved.guidance_scale]
    assert {r.seed for r in requests} == {5}
    same = np.abs(np.asarray(images[1], dtype=float) - np.asarray(final, dtype=float)).mean()
    assert same < 1  # the strip's image at the trajectory's scale is the trajectory's output

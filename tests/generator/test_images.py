"""generator.images (torch-free input images) and the new rows of generator.limits."""

import numpy as np
import pytest
from PIL import Image

from generator import limits
from generator.images import RESIZE_MODES, crop_region, fit, fit_mask, image_sha256, mask_from_image


def wide_image() -> Image.Image:
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:, :20] = (255, 0, 0)  # left half red, right half blue
    array[:, 20:] = (0, 0, 255)
    return Image.fromarray(array)


@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_fit_gives_exactly_the_size_asked(mode):
    for width, height in ((32, 32), (64, 16), (8, 40)):
        assert fit(wide_image(), width, height, mode).size == (width, height)
        assert fit_mask(wide_image(), width, height, mode).mode == "L"


def test_crop_and_resize_keeps_the_centre_and_resize_and_fill_stretches_the_edges():
    cropped = np.asarray(fit(wide_image(), 20, 20, "crop_and_resize")).astype(int)
    assert cropped[10, 2, 0] > 200 and cropped[10, 17, 2] > 200  # the middle 20 columns: red | blue
    filled = np.asarray(fit(wide_image(), 40, 40, "resize_and_fill")).astype(int)
    assert np.array_equal(filled[0], filled[10])  # the top border repeats the image's first row
    assert filled[20, 2, 0] > 200 and filled[20, 37, 2] > 200


def test_fit_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="resize mode must be one of"):
        fit(wide_image(), 8, 8, "zoom")


def test_image_sha256_follows_the_pixels_not_the_file():
    image = wide_image()
    assert image_sha256(image) == image_sha256(image.convert("RGBA"))
    changed = image.copy()
    changed.putpixel((0, 0), (254, 0, 0))
    assert image_sha256(changed) != image_sha256(image)
    assert image_sha256(image.convert("L")) != image_sha256(image)


def test_mask_from_alpha_reads_transparent_as_repaint():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 255))
    rgba.putpixel((1, 1), (0, 0, 0, 0))
    mask = mask_from_image(rgba)
    assert mask.getpixel((1, 1)) == 255 and mask.getpixel((0, 0)) == 0


def test_crop_region_is_the_padded_box_at_the_requested_aspect_ratio():
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (30, 30, 34, 38))  # 4 × 8
    x1, y1, x2, y2 = crop_region(mask, 2, 64, 32)  # a 2:1 request
    assert (x1, y1, x2, y2) == (20, 28, 44, 40) and (x2 - x1) == 2 * (y2 - y1)
    assert crop_region(Image.new("L", (8, 8), 0), 4, 8, 8) is None


def test_hires_error_checks_the_budget_and_the_mode():
    assert limits.hires_error(64, 64, 1.0, factor=8, max_pixels=1) is None
    assert "pixels" in limits.hires_error(512, 512, 2.0, factor=8, max_pixels=768 * 768)
    assert limits.hires_error(256, 256, 2.0, factor=8, max_pixels=768 * 768) is None
    assert "txt2img and img2img only" in limits.hires_error(64, 64, 2.0, factor=8, mode="inpaint")
    assert limits.hires_size(100, 60, 1.5, 8) == (144, 88)


def test_new_fields_are_in_the_table_with_their_defaults():
    fields = limits.FIELDS
    assert fields["strength"].default == 0.75 and fields["strength"].min_exclusive
    assert fields["resize_mode"].choices == RESIZE_MODES and fields["subseed"].default is None
    assert fields["hires_upscaler"].choices == limits.HIRES_UPSCALERS

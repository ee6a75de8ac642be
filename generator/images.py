"""Input images for img2img and inpainting, with Pillow and numpy only (no torch).

The web process brings an uploaded image (and its mask) to the request's width × height with `fit` / `fit_mask`
before a job is queued, so the worker and the engine only ever see images of exactly the requested size. This
module is re-exported by `generator.torch_free`, the one module of `generator` the web process imports.

The three resize modes are A1111's ("Resize mode" in its img2img tab):

- ``just_resize``: stretch to width × height (the aspect ratio may change);
- ``crop_and_resize``: scale to cover width × height keeping the aspect ratio, then cut the overflow equally from
  both sides (center crop);
- ``resize_and_fill``: scale to fit inside width × height keeping the aspect ratio, center it, and fill the two
  empty borders by stretching the image's edge rows (or columns) outwards, as A1111 does. We chose edge stretching
  over a flat mean colour because img2img then starts the border from colours that continue the picture, which a
  denoising strength below 1 keeps visible.

A mask goes through exactly the same geometry (`fit_mask`), so it stays aligned with its image.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

RESIZE_MODES = ("just_resize", "crop_and_resize", "resize_and_fill")

# Lanczos as A1111 and most tools use for both downscaling and upscaling photos; the mask uses the same filter so a
# resized mask keeps soft edges that line up with the image's (the engine blurs it again anyway).
RESAMPLE = Image.Resampling.LANCZOS


def fit(image: Image.Image, width: int, height: int, mode: str = "just_resize") -> Image.Image:
    """`image` as RGB at exactly width × height, by one of RESIZE_MODES (see the module's docstring)."""
    return _fit(image.convert("RGB"), width, height, mode)


def fit_mask(mask: Image.Image, width: int, height: int, mode: str = "just_resize") -> Image.Image:
    """`mask` as mode "L" (white = repaint) at exactly width × height, with the same geometry as `fit`."""
    return _fit(mask.convert("L"), width, height, mode)


def image_sha256(image: Image.Image) -> str:
    """A hash of the pixels, their mode and the size: the same picture gives the same hash whatever file held it.

    Used in the manifest (`Init image hash`, `Mask hash`) and in the result cache's key. An RGBA or palette image
    is hashed as RGB; "L", "1" and other one-band images as "L".
    """
    mode = "L" if len(image.getbands()) == 1 else "RGB"
    image = image.convert(mode)
    digest = hashlib.sha256(f"{mode} {image.width}x{image.height}\n".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def _fit(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, not {mode!r}")
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be positive, not {width} × {height}")
    if image.size == (width, height):
        return image.copy()
    if mode == "just_resize":
        return image.resize((width, height), RESAMPLE)
    if mode == "crop_and_resize":
        return _crop_and_resize(image, width, height)
    return _resize_and_fill(image, width, height)


def _crop_and_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    # Scale by the larger of the two ratios so both sides cover the target, then center-crop.
    scale = max(width / image.width, height / image.height)
    scaled_w = max(width, round(image.width * scale))
    scaled_h = max(height, round(image.height * scale))
    scaled = image.resize((scaled_w, scaled_h), RESAMPLE)
    left = (scaled_w - width) // 2
    top = (scaled_h - height) // 2
    return scaled.crop((left, top, left + width, top + height))


def _resize_and_fill(image: Image.Image, width: int, height: int) -> Image.Image:
    # Scale by the smaller ratio so the whole image fits, center it, then stretch its edge rows/columns outwards.
    scale = min(width / image.width, height / image.height)
    scaled_w = min(width, max(1, round(image.width * scale)))
    scaled_h = min(height, max(1, round(image.height * scale)))
    pixels = np.asarray(image.resize((scaled_w, scaled_h), RESAMPLE))
    top = (height - scaled_h) // 2
    left = (width - scaled_w) // 2
    pad = ((top, height - scaled_h - top), (left, width - scaled_w - left)) + ((0, 0),) * (pixels.ndim - 2)
    # numpy's "edge" padding repeats the outermost row/column: the same as stretching a one-pixel strip.
    return Image.fromarray(np.pad(pixels, pad, mode="edge"), mode=image.mode)


def mask_from_image(image: Image.Image) -> Image.Image:
    """A mask ("L", white = repaint) from a one-channel image, or from an image's alpha: transparent = repaint.

    An RGB image without alpha is read by its luminance (white = repaint), as A1111 reads a drawn mask.
    """
    if "A" in image.getbands():
        return Image.eval(image.getchannel("A"), lambda alpha: 255 - alpha)
    return image.convert("L")


def crop_region(mask: Image.Image, padding: int, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The box "inpaint only the masked area" repaints: the mask's nonzero pixels' bounding box grown by `padding`,
    then widened (or heightened) to the aspect ratio of width × height, within the image; None for an empty mask.

    A1111's `get_crop_region` and `expand_crop_region`, so a box repainted at width × height is not distorted.
    """
    box = mask.convert("L").point(lambda value: 255 if value else 0).getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    x1, y1 = max(x1 - padding, 0), max(y1 - padding, 0)
    x2, y2 = min(x2 + padding, mask.width), min(y2 + padding, mask.height)
    if (x2 - x1) / (y2 - y1) > width / height:
        y1, y2 = _expand(y1, y2, (x2 - x1) * height / width, mask.height)
    else:
        x1, x2 = _expand(x1, x2, (y2 - y1) * width / height, mask.width)
    return x1, y1, x2, y2


def _expand(low: int, high: int, desired: float, limit: int) -> tuple[int, int]:
    # Grow [low, high) to `desired` around its middle, shifted back inside [0, limit) where it runs over.
    grow = int(desired - (high - low))
    low, high = low - grow // 2, high + grow - grow // 2
    if high > limit:
        low, high = low - (high - limit), limit
    if low < 0:
        low, high = 0, min(high - low, limit)
    return low, high

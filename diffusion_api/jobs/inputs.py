"""Input images (init image, mask) checked in the web process, with Pillow only: no torch is ever loaded here.

Every image a client sends, as an upload or as base64 in a job, goes through `open_checked` before anything is
stored or queued. The order matters: Pillow's `Image.open` reads only the header, so the declared size is checked
before `load()` decodes a single pixel, and a decompression bomb (a tiny file declaring 100 000 × 100 000 pixels)
costs nothing.
"""

import base64
import binascii
import hashlib
import io
import re

from django.conf import settings
from PIL import Image, ImageOps, UnidentifiedImageError

from diffusion_api.jobs import store
from generator.torch_free import images

FORMATS = ("PNG", "JPEG", "WEBP")
# 8 bits a channel only. 16-bit PNGs open as "I;16"/"I" (grey) or, worse, as "RGB" with the low byte dropped, so
# their bit depth is read from the PNG header too (_png_bit_depth).
MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr")
_DATA_URI = re.compile(r"^data:image/[a-z0-9.+-]+;base64,", re.IGNORECASE)


class ImageRefused(ValueError):
    """The bytes are not an image this service accepts; the message names the rule."""


def decode_base64(text: str) -> bytes:
    """Raw base64 or a `data:image/…;base64,` URI → bytes; ImageRefused when it is neither."""
    text = _DATA_URI.sub("", text.strip(), count=1)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ImageRefused('must be base64 (raw or a data:image/…;base64, URI) or {"upload": "<id>"}') from error


def open_checked(data: bytes) -> tuple[Image.Image, str]:
    """Decode an input image safely: (the image with its EXIF orientation applied, its format).

    Refused, each with a message naming the rule: not PNG/JPEG/WebP, more pixels than UPLOAD_MAX_PIXELS declared
    in the header, animated, 16-bit or another mode this service does not handle, truncated or corrupt.
    """
    limit = settings.UPLOAD_MAX_PIXELS
    # Pillow's own bomb guard as a second line (it raises past twice this); the check below comes first anyway.
    Image.MAX_IMAGE_PIXELS = limit
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        if isinstance(error, Image.DecompressionBombError):
            raise ImageRefused(
                f"the image declares more than {2 * limit} pixels; at most {limit} (UPLOAD_MAX_PIXELS)"
            ) from error
        raise ImageRefused("not a PNG, JPEG or WebP image") from error
    width, height = image.size
    if width * height > limit:  # only the header has been read so far
        raise ImageRefused(f"the image declares {width} × {height} pixels; at most {limit} (UPLOAD_MAX_PIXELS)")
    if getattr(image, "is_animated", False) or getattr(image, "n_frames", 1) > 1:
        raise ImageRefused("animated images are not accepted; send a single frame")
    if image.mode not in MODES or _png_bit_depth(data) == 16:
        raise ImageRefused(f"{_describe_mode(image, data)} images are not accepted; send 8 bits per channel")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageRefused(f"the {image.format} image could not be decoded (truncated or corrupt)") from error
    return ImageOps.exif_transpose(image), image.format


def normalized(image: Image.Image) -> Image.Image:
    """The image in the mode it is stored in: alpha kept (a mask may be an alpha channel), one band as L."""
    if image.mode == "1":
        return image.convert("L")
    if image.mode in ("LA", "La"):
        return image.convert("LA")
    if image.mode in ("RGBA", "RGBa", "PA") or (image.mode == "P" and "transparency" in image.info):
        return image.convert("RGBA")
    return image if image.mode == "L" else image.convert("RGB")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def store_png(data: bytes, *, folder: str) -> tuple[str, str]:
    """Store PNG bytes under their SHA-256 through Django's storage API: (storage name, sha256).

    Content-addressed: the same bytes stored twice are one file, so the write is skipped when it exists.
    store.StoreUnavailable when the store does not take them: the request is refused (503), nothing is queued.
    """
    digest = hashlib.sha256(data).hexdigest()
    return store.save(f"{folder}/{digest[:2]}/{digest}.png", data), digest


def mask_from(image: Image.Image) -> Image.Image:
    """A mask as the engine takes it (mode L, white = repaint) from one channel, or from an alpha channel
    (transparent = repaint, as in A1111 and the OpenAI images API)."""
    bands = image.getbands()
    if "A" in bands or "a" in bands:
        return Image.eval(image.getchannel("A" if "A" in bands else "a"), lambda alpha: 255 - alpha)
    if len(bands) == 1:
        return image.convert("L")
    raise ImageRefused("a mask must have one channel (white = repaint) or an alpha channel (transparent = repaint)")


def mask_fits_image(mask: Image.Image, image: Image.Image) -> bool:
    """A mask goes through its image's geometry, so it must have the image's size or at least its aspect ratio
    (within one pixel at the mask's size): then resizing it lines up with the image."""
    if mask.size == image.size:
        return True
    return abs(mask.width * image.height / image.width - mask.height) <= 1


def fit_input(image: Image.Image, width: int, height: int, resize_mode: str) -> Image.Image:
    return images.fit(image, width, height, resize_mode)


def fit_mask(mask: Image.Image, width: int, height: int, resize_mode: str) -> Image.Image:
    return images.fit_mask(mask, width, height, resize_mode)


def _png_bit_depth(data: bytes) -> int | None:
    # A PNG starts with its 8-byte signature and the IHDR chunk, whose 9th data byte is the bit depth.
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) > 24:
        return data[24]
    return None


def _describe_mode(image: Image.Image, data: bytes) -> str:
    depth = _png_bit_depth(data)
    return "16-bit" if depth == 16 or image.mode.startswith("I;16") else f"{image.mode}-mode"

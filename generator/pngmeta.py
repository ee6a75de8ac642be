"""PNG files that carry their generation parameters.

Each PNG holds two text chunks:
- `parameters`: the A1111 web UI's plain-text form (prompt, `Negative prompt: …`, then a line of
  `Key: value` pairs), which image viewers and other tools already read;
- `generator_manifest`: a JSON manifest with everything needed to reproduce the image.
"""

from __future__ import annotations

import io
import json

from PIL import Image, PngImagePlugin

MANIFEST_KEY = "generator_manifest"
PARAMETERS_KEY = "parameters"


def a1111_parameters(manifest: dict) -> str:
    lines = [manifest["prompt"]]
    if manifest.get("negative_prompt"):
        lines.append(f"Negative prompt: {manifest['negative_prompt']}")
    pairs = {
        "Steps": manifest["steps"],
        "Sampler": manifest["scheduler"],
        "CFG scale": manifest["guidance_scale"],
        "Seed": manifest["seed"],
        "Size": f"{manifest['width']}x{manifest['height']}",
        "Model hash": manifest["model"]["hash"][:10],
        "Model": manifest["model"]["name"],
    }
    if manifest.get("guidance_rescale"):
        pairs["CFG rescale"] = manifest["guidance_rescale"]
    lines.append(", ".join(f"{key}: {value}" for key, value in pairs.items()))
    return "\n".join(lines)


def png_bytes(image: Image.Image, manifest: dict) -> bytes:
    """Encode `image` as PNG with both text chunks. Same pixels and manifest → same bytes."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, a1111_parameters(manifest))
    info.add_text(MANIFEST_KEY, json.dumps(manifest, sort_keys=True))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_manifest(png: bytes | str) -> dict:
    """The JSON manifest of a PNG written by `png_bytes` (bytes, or a file path)."""
    source = io.BytesIO(png) if isinstance(png, bytes | bytearray) else png
    with Image.open(source) as image:
        text = getattr(image, "text", {}).get(MANIFEST_KEY)
    if text is None:
        raise ValueError(f"the PNG has no {MANIFEST_KEY!r} text chunk")
    return json.loads(text)

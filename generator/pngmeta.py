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
    pairs.update(_image_mode_pairs(manifest))
    lines.append(", ".join(f"{key}: {value}" for key, value in pairs.items()))
    return "\n".join(lines)


def _image_mode_pairs(manifest: dict) -> dict:
    """A1111's names for the img2img, inpainting, variation and hires fields a manifest has (none for txt2img).

    A1111 writes one `Denoising strength`: img2img's, or in txt2img the hires pass's. An img2img with a hires pass
    keeps img2img's there and adds `Hires denoising strength`. Input images appear by their pixels' hashes (10
    hex digits, as `Model hash`).
    """
    pairs = {}
    if "strength" in manifest:
        pairs["Denoising strength"] = manifest["strength"]
    if "init_image_sha256" in manifest:
        pairs["Init image hash"] = manifest["init_image_sha256"][:10]
    if "mask_sha256" in manifest:
        pairs.update({"Mask hash": manifest["mask_sha256"][:10], "Mask blur": manifest["mask_blur"]})
        if manifest.get("inpaint_full_res"):
            pairs.update({"Inpaint area": "Only masked", "Masked area padding": manifest["inpaint_full_res_padding"]})
    if "subseed" in manifest:
        pairs.update({"Variation seed": manifest["subseed"], "Variation seed strength": manifest["subseed_strength"]})
    if "hires_scale" in manifest:
        if "strength" in manifest:
            pairs["Hires denoising strength"] = manifest["hires_strength"]
        else:
            pairs["Denoising strength"] = manifest["hires_strength"]
        pairs.update(
            {
                "Hires upscale": manifest["hires_scale"],
                "Hires steps": manifest["hires_steps"],
                "Hires upscaler": manifest["hires_upscaler"],
            }
        )
    if manifest.get("vae_tile_size"):
        pairs["VAE tile size"] = manifest["vae_tile_size"]
    return pairs


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

"""Image and text features for the evaluation's distances and CLIP score; nothing is ever downloaded.

- `ClipFeatures`: the model's own CLIP (`clip/`, the CLIP stage's towers): unit image embeddings for FID
  and KID, unit text embeddings for the CLIP score.
- `InceptionFeatures`: 2048-d pool features of an Inception v3 from a local weight file (a torchvision
  `inception_v3` state dict, or pytorch-fid's `pt_inception-*.pth`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from generator.loading import LoadedModel
from generator.text import image_embeddings, text_embeddings

INCEPTION_OPTION = "--inception-weights"


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) → float32 (N, 3, H, W) in [-1, 1], as the CLIP stage was trained."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


class ClipFeatures:
    """The model's own CLIP (`clip/`): unit image embeddings for FID/KID, and text embeddings for the CLIP score.

    The text side uses `clip/`'s tokenizer when that folder holds one, else the model's `tokenizer/`
    (the training export shares one tokenizer between CLIP and the text encoder).
    """

    def __init__(self, clip_dir: Path, fallback_tokenizer_dir: Path, device: torch.device) -> None:
        from transformers import CLIPModel, CLIPTokenizer

        self.device = device
        self.model = CLIPModel.from_pretrained(clip_dir, local_files_only=True, dtype=torch.float32)
        self.model.to(device).eval().requires_grad_(False)
        has_tokenizer = any((clip_dir / name).is_file() for name in ("vocab.json", "tokenizer.json"))
        tokenizer_dir = clip_dir if has_tokenizer else fallback_tokenizer_dir
        self.tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        text_config = self.model.config.text_config
        if len(self.tokenizer) > text_config.vocab_size:
            raise ValueError(
                f"the tokenizer in {tokenizer_dir} has {len(self.tokenizer)} tokens but {clip_dir}'s text tower "
                f"knows {text_config.vocab_size}: they were not trained together"
            )
        self.max_tokens = min(self.tokenizer.model_max_length, text_config.max_position_embeddings)

    @classmethod
    def for_model(cls, model: LoadedModel) -> tuple[ClipFeatures | None, str]:
        """The model's CLIP, or None and the reason."""
        clip_dir = model.path / "clip"
        if not (clip_dir / "config.json").is_file():
            return None, (
                f"{clip_dir} does not exist: FID, KID and CLIP score need the CLIP stage's image tower "
                "(the training export writes it); skipped"
            )
        return cls(clip_dir, model.path / "tokenizer", model.device), f"CLIP features from {clip_dir}"

    @classmethod
    def try_for_model(cls, model: LoadedModel, skipped: str) -> tuple[ClipFeatures | None, str]:
        """`for_model`, and a `clip/` folder that cannot be used is None too, with why and what is `skipped`."""
        try:
            return cls.for_model(model)
        except (OSError, ValueError) as error:
            return None, f"{model.path / 'clip'} could not be used ({error}); {skipped} skipped"

    @torch.no_grad()
    def images(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """(N, projection_dim) unit image embeddings of uint8 images (N, 64, 64, 3)."""
        parts = [
            image_embeddings(self.model, to_pixels(images[start : start + batch_size]).to(self.device))
            for start in range(0, len(images), batch_size)
        ]
        return torch.cat(parts).double().cpu().numpy()

    @torch.no_grad()
    def texts(self, prompts: list[str]) -> np.ndarray:
        """(N, projection_dim) unit text embeddings; each distinct prompt is encoded once."""
        unique = list(dict.fromkeys(prompts))
        ids = self.tokenizer(
            unique, padding="max_length", max_length=self.max_tokens, truncation=True, return_tensors="pt"
        ).input_ids
        embeddings = text_embeddings(self.model, ids.to(self.device)).double().cpu().numpy()  # (U, D)
        return embeddings[[unique.index(p) for p in prompts]]


class InceptionFeatures:
    """2048-d pool features of an Inception v3 loaded from a local file (never downloaded)."""

    def __init__(self, network: torch.nn.Module, kind: str, path: Path) -> None:
        self.network, self.kind, self.path = network, kind, path

    @classmethod
    def from_path(cls, value: str | Path | None) -> tuple[InceptionFeatures | None, str]:
        """The network in the local weight file `value` (`--inception-weights`), or None and why not."""
        if not value:
            return None, (
                f"not available: pass {INCEPTION_OPTION} with a local torchvision inception_v3 state dict or a "
                "pytorch-fid pt_inception file to add it (weights are never downloaded)"
            )
        path = Path(value)
        if not path.is_file():
            return None, f"not available: {INCEPTION_OPTION} {value} is not a file"
        try:
            import torchvision  # noqa: F401
        except ImportError:
            return None, f"not available: {INCEPTION_OPTION} is given but torchvision is not installed"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            fid_variant = state["fc.weight"].shape[0] == 1008  # TF's 1008 classes: pytorch-fid's network
            aux_logits = any(key.startswith("AuxLogits.") for key in state)
            network = _fid_inception() if fid_variant else _torchvision_inception(aux_logits)
            network.load_state_dict(state)  # strict: a partly loaded network would give a wrong FID silently
        except ImportError:
            return None, f"not available: {path} is pytorch-fid's Inception, but pytorch-fid is not installed"
        except Exception as error:  # not a state dict, or not an Inception v3's
            return None, f"not available: {path} is not an Inception v3 state dict ({type(error).__name__}: {error})"
        network.fc = torch.nn.Identity()
        kind = "pytorch-fid Inception v3" if fid_variant else "torchvision Inception v3"
        return cls(network.eval().requires_grad_(False), kind, path), f"{kind} pool features from {path}"

    @torch.no_grad()
    def images(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(N, 2048) pool features: images resized to 299 × 299 (bilinear), pixels in [-1, 1] as Inception expects."""
        parts = []
        for start in range(0, len(images), batch_size):
            pixels = to_pixels(images[start : start + batch_size])
            pixels = torch.nn.functional.interpolate(pixels, size=(299, 299), mode="bilinear", align_corners=False)
            parts.append(self.network(pixels).flatten(1))  # fc is Identity: the 2048-d average pool
        return torch.cat(parts).double().numpy()


def _torchvision_inception(aux_logits: bool) -> torch.nn.Module:
    from torchvision.models import inception_v3

    return inception_v3(weights=None, aux_logits=aux_logits, init_weights=False, transform_input=False)


def _fid_inception() -> torch.nn.Module:
    """pytorch-fid's Inception (TF weights' blocks), built as its `fid_inception_v3` does but without its download."""
    from pytorch_fid import inception as fid

    network = fid._inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    network.Mixed_5b = fid.FIDInceptionA(192, pool_features=32)
    network.Mixed_5c = fid.FIDInceptionA(256, pool_features=64)
    network.Mixed_5d = fid.FIDInceptionA(288, pool_features=64)
    network.Mixed_6b = fid.FIDInceptionC(768, channels_7x7=128)
    network.Mixed_6c = fid.FIDInceptionC(768, channels_7x7=160)
    network.Mixed_6d = fid.FIDInceptionC(768, channels_7x7=160)
    network.Mixed_6e = fid.FIDInceptionC(768, channels_7x7=192)
    network.Mixed_7b = fid.FIDInceptionE_1(1280)
    network.Mixed_7c = fid.FIDInceptionE_2(2048)
    return network

"""A small CNN that reads a single-object shapes64 image: colour × shape, size, cell and background.

The evaluation's Inception Score needs class probabilities p(y|x) from a network that knows the
image domain; an ImageNet Inception network knows nothing of coloured shapes on flat
backgrounds, so this classifier is trained here, on rendered shapes64 scenes, and its 18-way
colour × shape head gives the probabilities (`ShapesClassifier.probabilities`).

Training data: one-object scenes drawn as the spec draws them, over all 18 colour–shape pairs
(the held-out pairs too: the classifier is a measuring instrument, not the generator), from
every content bucket except the validation bucket, so that its accuracy on validation images
(`validation_accuracy`) is measured on images it never saw. Each training image gets a little
Gaussian pixel noise, so that slightly noisy generated images are read as their clean
counterparts. Training is deterministic for a given seed and thread count.

`cached_classifier()` trains once (about a minute on two CPU cores) and keeps the weights in
`var/eval/classifier.safetensors` with a JSON file beside it (config, training settings and
the measured validation accuracy); later calls load the file.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from generator.data import shapes64
from generator.data.shapes64 import ALL_PAIRS, BACKGROUNDS, CANVAS, CELLS, SIDES, Scene

DEFAULT_PATH = Path("var/eval/classifier.safetensors")
# Enough for >= 98% colour × shape accuracy on validation images (see `validation_accuracy`).
DEFAULT_STEPS = 400
DEFAULT_BATCH_SIZE = 64
DEFAULT_SEED = 0
FORMAT = "shapes64-classifier/1"

# Each head's classes, in output order. `colour_shape` is ALL_PAIRS: (colour, shape) for colour in COLOURS …
HEADS: dict[str, tuple[str, ...]] = {
    "colour_shape": tuple(f"{colour} {shape}" for colour, shape in ALL_PAIRS),
    "size": tuple(SIDES),
    "cell": CELLS,
    "background": tuple(BACKGROUNDS),
}
WHAT_HEADS = ("colour_shape", "size")  # read from pooled features; the others from the map
MAX_NOISE_STD = 0.08  # training augmentation: pixel noise std drawn from [0, this] in [-1, 1] units


@dataclass(frozen=True)
class ClassifierConfig:
    channels: tuple[int, ...] = (16, 32, 64)  # one stride-2 stage each: 64 → 32 → 16 → 8
    hidden: int = 128


class ShapesClassifier(nn.Module):
    """Conv stages down to an 8 × 8 map; pooled for what the object is, flattened for where it is and the background."""

    def __init__(self, config: ClassifierConfig = ClassifierConfig()) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        in_channels = 3
        for channels in config.channels:
            layers += [
                nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(),
                nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(),
            ]
            in_channels = channels
        self.features = nn.Sequential(*layers)
        side = CANVAS // 2 ** len(config.channels)
        # What an object is does not depend on where it is: colour × shape and size read pooled features.
        self.what = nn.Sequential(nn.Linear(2 * in_channels, config.hidden), nn.ReLU())
        # Where it is does: cell and background read the flattened map.
        self.where = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * side * side, config.hidden), nn.ReLU())
        self.heads = nn.ModuleDict({name: nn.Linear(config.hidden, len(classes)) for name, classes in HEADS.items()})

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """[-1, 1] pixels (N, 3, 64, 64) → logits per head, e.g. `colour_shape`: (N, 18)."""
        features = self.features(pixels)  # (N, C, 8, 8)
        pooled = torch.cat([features.amax(dim=(2, 3)), features.mean(dim=(2, 3))], dim=1)  # (N, 2C)
        what, where = self.what(pooled), self.where(features)  # (N, hidden) each
        return {name: head(what if name in WHAT_HEADS else where) for name, head in self.heads.items()}

    @torch.no_grad()
    def logits(self, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
        """uint8 images (N, 64, 64, 3) → float64 logits per head (N, classes)."""
        images = _check_images(images)
        self.eval()
        parts: dict[str, list[np.ndarray]] = {name: [] for name in HEADS}
        for start in range(0, len(images), batch_size):
            out = self(_to_pixels(images[start : start + batch_size]))
            for name, value in out.items():
                parts[name].append(value.double().numpy())
        return {
            name: np.concatenate(value) if value else np.zeros((0, len(HEADS[name]))) for name, value in parts.items()
        }

    def probabilities(self, images: np.ndarray, head: str = "colour_shape") -> np.ndarray:
        """Softmax probabilities of one head for uint8 images (N, 64, 64, 3): (N, 18) for `colour_shape`."""
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; heads: {', '.join(HEADS)}")
        logits = self.logits(images)[head]
        logits = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def predict(self, images: np.ndarray) -> dict[str, list[str]]:
        """Class names per head for uint8 images (N, 64, 64, 3)."""
        return {name: [HEADS[name][i] for i in value.argmax(axis=1)] for name, value in self.logits(images).items()}


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (CANVAS, CANVAS, 3) or images.dtype != np.uint8:
        expected = f"(N, {CANVAS}, {CANVAS}, 3)"
        raise ValueError(f"expected uint8 images of shape {expected}, got {images.dtype} {images.shape}")
    return images


def _to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) → float32 (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# --- Data -----------------------------------------------------------------------------------


def labels_of(scene: Scene) -> dict[str, int]:
    """Class index per head of a one-object scene."""
    if len(scene.objects) != 1:
        raise ValueError(f"the classifier reads one-object scenes, got {len(scene.objects)} objects")
    (obj,) = scene.objects
    return {
        "colour_shape": ALL_PAIRS.index((obj.colour, obj.shape)),
        "size": HEADS["size"].index(obj.size),
        "cell": CELLS.index(obj.cell),
        "background": HEADS["background"].index(scene.background),
    }


def draw_single_object_scenes(rng: np.random.Generator, count: int) -> list[Scene]:
    """`count` one-object scenes over all 18 pairs, drawn as the spec draws them, never from the validation bucket."""
    scenes = []
    while len(scenes) < count:
        background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
        scene = shapes64._draw_single(rng, background, ALL_PAIRS)
        if shapes64.validation_bucket(scene) != 0:
            scenes.append(scene)
    return scenes


def training_batch(rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Rendered uint8 images (N, 64, 64, 3) and label indices per head (N,)."""
    scenes = draw_single_object_scenes(rng, batch_size)
    images = np.stack([np.asarray(shapes64.render(scene)) for scene in scenes])
    labels = [labels_of(scene) for scene in scenes]
    return images, {name: np.array([label[name] for label in labels]) for name in HEADS}


# --- Training -------------------------------------------------------------------------------


def train_classifier(
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = DEFAULT_SEED,
    config: ClassifierConfig = ClassifierConfig(),
    learning_rate: float = 2e-3,
) -> ShapesClassifier:
    """Train a classifier from scratch for `steps` Adam steps (cosine-decayed); the same seed gives the same weights."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    with torch.random.fork_rng(devices=[]):  # seeded initial weights without touching the caller's RNG
        torch.manual_seed(seed)
        model = ShapesClassifier(config)
    rng = np.random.default_rng([seed, 0])
    noise = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, eta_min=learning_rate * 0.05)
    model.train()
    for _ in range(steps):
        images, labels = training_batch(rng, batch_size)
        pixels = _to_pixels(images)  # (N, 3, 64, 64)
        std = torch.rand((len(pixels), 1, 1, 1), generator=noise) * MAX_NOISE_STD
        pixels = pixels + std * torch.randn(pixels.shape, generator=noise)
        logits = model(pixels)
        loss = sum(nn.functional.cross_entropy(logits[name], torch.from_numpy(labels[name])) for name in HEADS)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def validation_scenes(count: int = 1000, seed: int = 0) -> list[Scene]:
    """The one-object scenes among the first scenes of the validation split, `count` of them."""
    scenes, index = [], 0
    while len(scenes) < count:
        scene = shapes64.make_scene(seed, index, "validation")
        index += 1
        if len(scene.objects) == 1:
            scenes.append(scene)
    return scenes


def validation_accuracy(model: ShapesClassifier, count: int = 1000, seed: int = 0) -> dict[str, float]:
    """Accuracy per head on `count` one-object validation images (real renders the classifier never saw)."""
    scenes = validation_scenes(count, seed)
    images = np.stack([np.asarray(shapes64.render(scene)) for scene in scenes])
    logits = model.logits(images)
    accuracy = {}
    for name in HEADS:
        truth = np.array([labels_of(scene)[name] for scene in scenes])
        accuracy[name] = float((logits[name].argmax(axis=1) == truth).mean())
    return accuracy


# --- Files ----------------------------------------------------------------------------------


def save_classifier(model: ShapesClassifier, path: str | Path, info: dict | None = None) -> Path:
    """Weights to `path` (.safetensors) and `{config, classes, **info}` to the .json beside it."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: value.contiguous() for name, value in model.state_dict().items()}, str(path))
    meta = {"format": FORMAT, "config": asdict(model.config), "classes": {k: list(v) for k, v in HEADS.items()}}
    path.with_suffix(".json").write_text(json.dumps({**meta, **(info or {})}, indent=2) + "\n", encoding="utf-8")
    return path


def read_classifier_info(path: str | Path) -> dict:
    """The JSON beside a saved classifier."""
    return json.loads(Path(path).with_suffix(".json").read_text(encoding="utf-8"))


def load_classifier(path: str | Path) -> ShapesClassifier:
    from safetensors.torch import load_file

    path = Path(path)
    info = read_classifier_info(path)
    if info.get("format") != FORMAT:
        raise ValueError(f"{path.with_suffix('.json')} is not a {FORMAT} file (format {info.get('format')!r})")
    if info["classes"] != {k: list(v) for k, v in HEADS.items()}:
        raise ValueError(f"{path} was trained for other classes than this code's HEADS; delete it to retrain")
    config = ClassifierConfig(**{**info["config"], "channels": tuple(info["config"]["channels"])})
    model = ShapesClassifier(config)
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def cached_classifier(
    path: str | Path = DEFAULT_PATH,
    *,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = DEFAULT_SEED,
    validation_images: int = 1000,
) -> ShapesClassifier:
    """The classifier at `path`; if there is none, train one (`steps`, `batch_size`, `seed`), measure its accuracy
    on `validation_images` one-object validation images and save it."""
    path = Path(path)
    if path.is_file() and path.with_suffix(".json").is_file():
        return load_classifier(path)
    started = time.perf_counter()
    model = train_classifier(steps, batch_size, seed)
    seconds = time.perf_counter() - started
    info = {
        "training": {"steps": steps, "batch_size": batch_size, "seed": seed, "seconds": round(seconds, 1)},
        "validation_accuracy": validation_accuracy(model, validation_images),
        "validation_images": validation_images,
    }
    save_classifier(model, path, info)
    return model

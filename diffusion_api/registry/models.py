"""The model registry: checkpoints and LoRAs on local disk that the service offers, each scanned and hashed once.

`python manage.py scan_models DIR` fills it (services.registry_scan); the admin edits what a scan cannot know:
whether an entry is enabled, who may use it, its defaults and limits. The `MODELS` setting stays as the bootstrap for
the embedded default: a name there that the registry does not hold is offered to everyone (catalog.py).
"""

from django.db import models


class Kind(models.TextChoices):
    SD1 = "sd1", "SD 1.x"
    SD2 = "sd2", "SD 2.x"
    SDXL = "sdxl", "SDXL"
    CUSTOM = "custom", "custom"  # another text-conditioning width, like the built-in model's


class Entry(models.Model):
    """What a checkpoint and a LoRA share: a name requests use, a file on disk, its hash, and who may use it."""

    name = models.CharField(max_length=100, unique=True)  # what a request's `model` (or a LoRA's `name`) says
    path = models.CharField(max_length=500)
    sha256 = models.CharField(max_length=64, blank=True)
    signature = models.TextField(blank=True, editable=False)  # weight files' sizes and mtimes when hashed
    enabled = models.BooleanField(default=True)  # an admin's switch
    usable = models.BooleanField(default=True)  # a scan's or a worker's finding: false when the files are broken
    problem = models.TextField(blank=True)  # why it is unusable
    groups = models.ManyToManyField(
        "auth.Group", blank=True, help_text="Who may use it: members of these groups; everyone when none is chosen."
    )
    scanned_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ImageModel(Entry):
    """A diffusers-layout folder: SD 1.x, SD 2.x, SDXL, inpainting or a custom width such as the built-in model."""

    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.CUSTOM)
    inpainting = models.BooleanField(default=False)  # a 9-channel UNet
    context_dim = models.PositiveIntegerField(default=0)  # the UNet's cross_attention_dim: LoRAs must match it
    defaults = models.JSONField(
        default=dict, blank=True, help_text='Overrides of the folder\'s defaults, e.g. {"steps": 20, "width": 512}.'
    )
    limits = models.JSONField(
        default=dict, blank=True, help_text='Lower limits for this model: {"max_pixels": 262144, "max_steps": 50}.'
    )


class Lora(Entry):
    """A LoRA `.safetensors` file (kohya or diffusers format), applied per request by the workers."""

    format = models.CharField(max_length=20, blank=True)  # "kohya", "diffusers" or "peft"
    base_kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.CUSTOM)
    context_dim = models.PositiveIntegerField(default=0)  # the text-conditioning width it was trained for
    rank = models.PositiveIntegerField(default=0)
    size_bytes = models.BigIntegerField(default=0)

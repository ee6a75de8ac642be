"""The registry in the admin: enable or disable an entry, choose who may use it, set a model's defaults and limits.

What a scan finds (path, kind, hash, whether the files are whole) is read-only here: `scan_models` writes it.
"""

from django.contrib import admin
from django.core.exceptions import ValidationError

from diffusion_api.registry.models import ImageModel, Lora

DEFAULT_KEYS = {"width", "height", "steps", "guidance_scale", "scheduler"}
LIMIT_KEYS = {"max_pixels", "max_steps"}


def _check_keys(value, allowed: set[str], what: str) -> None:
    if not isinstance(value, dict):
        raise ValidationError(f"{what} must be a JSON object")
    if unknown := set(value) - allowed:
        raise ValidationError(f"unknown {what} {sorted(unknown)}; allowed: {sorted(allowed)}")


class ImageModelForm(admin.ModelAdmin.form):
    def clean_defaults(self):
        _check_keys(self.cleaned_data["defaults"], DEFAULT_KEYS, "defaults")
        return self.cleaned_data["defaults"]

    def clean_limits(self):
        limits = self.cleaned_data["limits"]
        _check_keys(limits, LIMIT_KEYS, "limits")
        if any(not isinstance(v, int) or v < 1 for v in limits.values()):
            raise ValidationError("limits must be positive integers")
        return limits


@admin.register(ImageModel)
class ImageModelAdmin(admin.ModelAdmin):
    form = ImageModelForm
    list_display = ("name", "kind", "inpainting", "enabled", "usable", "scanned_at")
    list_filter = ("kind", "enabled", "usable")
    search_fields = ("name", "path")
    readonly_fields = ("path", "kind", "inpainting", "context_dim", "sha256", "usable", "problem", "scanned_at")
    filter_horizontal = ("groups",)


@admin.register(Lora)
class LoraAdmin(admin.ModelAdmin):
    list_display = ("name", "base_kind", "format", "rank", "enabled", "usable", "scanned_at")
    list_filter = ("base_kind", "enabled", "usable")
    search_fields = ("name", "path")
    readonly_fields = (
        "path", "format", "base_kind", "context_dim", "rank", "size_bytes", "sha256", "usable", "problem", "scanned_at",
    )
    filter_horizontal = ("groups",)

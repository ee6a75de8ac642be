"""`python manage.py scan_models DIR`: register the model folders and LoRA files under DIR (services.registry_scan)."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from diffusion_api.registry.services import registry_scan


class Command(BaseCommand):
    help = "Register diffusers-layout model folders and LoRA .safetensors files found under DIR."

    def add_arguments(self, parser):
        parser.add_argument("directory", type=Path)

    def handle(self, *args, directory: Path, **options):
        try:
            report = registry_scan(directory=directory)
        except FileNotFoundError as error:
            raise CommandError(str(error)) from error
        for name in report.models:
            self.stdout.write(f"model {name}: ok")
        for name in report.loras:
            self.stdout.write(f"lora {name}: ok")
        for name, problem in report.unusable.items():
            self.stdout.write(f"{name}: unusable: {problem}")
        for path, why in report.skipped.items():
            self.stdout.write(f"{path}: skipped: {why}")
        self.stdout.write(
            f"{len(report.models)} models, {len(report.loras)} LoRAs, {len(report.unusable)} unusable, "
            f"{len(report.skipped)} skipped"
        )

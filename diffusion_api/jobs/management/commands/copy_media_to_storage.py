from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from diffusion_api.jobs import store


class Command(BaseCommand):
    help = (
        "Copy every file under DIRECTORY into the default storage under the same relative name, skipping names it "
        "has already: the uploads/ and inputs/ of a release that kept them in a media folder (docs/deploy.md, "
        "upgrading). Safe to run again."
    )

    def add_arguments(self, parser):
        parser.add_argument("directory", type=Path, help="the old MEDIA_ROOT, e.g. the old media volume mounted")

    def handle(self, *args, directory: Path, **options):
        if not directory.is_dir():
            raise CommandError(f"{directory} is not a folder")
        copied = skipped = 0
        for path in sorted(path for path in directory.rglob("*") if path.is_file()):
            name = path.relative_to(directory).as_posix()  # what the rows name it by: relative to MEDIA_ROOT
            try:
                if store.copy_file(path, name):
                    copied += 1
                else:
                    skipped += 1
            except store.StoreUnavailable as error:
                raise CommandError(
                    f"stopped at {name} after copying {copied} and skipping {skipped}: {error}; run it again once "
                    "the store answers (what is copied is skipped)"
                ) from error
        self.stdout.write(f"copied {copied}, skipped {skipped} already in the store")

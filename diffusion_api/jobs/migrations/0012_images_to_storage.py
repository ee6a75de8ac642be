"""Write every image the database holds to Django's storage (the file system, or the S3-compatible store), and clear
its bytes from the database once the store has them.

Nothing is lost if the store fails part-way: an image whose write failed keeps its bytes in the database as `held`,
and the sweeper moves it later (services.image_store_sweep); after the first failure the rest are left to it too,
rather than waiting on a dead store once per image. Each image is its own transaction (atomic = False), so an
interrupted migration leaves every row either stored or held. Names are the service's (store.image_name), written
out here so that this migration does not change when the service does.

Backwards: the bytes come back into the database (the store keeps its copies); an expired image comes back empty,
as 0010's column cannot be null and its bytes were deleted on purpose.
"""

import hashlib
import logging

from botocore.exceptions import BotoCoreError, ClientError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import migrations

logger = logging.getLogger(__name__)


def to_storage(apps, schema_editor):
    JobImage = apps.get_model("jobs", "JobImage")
    for pk in list(JobImage.objects.filter(state="held", png__isnull=False).values_list("pk", flat=True)):
        image = JobImage.objects.only("pk", "job_id", "index", "png").get(pk=pk)
        data = bytes(image.png)
        digest = hashlib.sha256(data).hexdigest()
        name = f"images/{image.job_id}/{image.index}-{digest[:16]}.png"
        measured = JobImage.objects.filter(pk=pk)
        try:
            if not default_storage.exists(name):
                name = default_storage.save(name, ContentFile(data))
        except (OSError, BotoCoreError, ClientError) as error:
            measured.update(sha256=digest, size=len(data), store_error=f"{type(error).__name__}: {error}"[:2000])
            logger.warning("the store refused an image (%s); the rest stay held for the sweeper to move", error)
            return
        measured.update(state="stored", file=name, png=None, sha256=digest, size=len(data))


def to_database(apps, schema_editor):
    JobImage = apps.get_model("jobs", "JobImage")
    for pk in list(JobImage.objects.filter(state="stored").values_list("pk", flat=True)):
        image = JobImage.objects.only("pk", "file").get(pk=pk)
        with default_storage.open(image.file.name, "rb") as file:  # a store that fails stops the migration
            data = file.read()
        JobImage.objects.filter(pk=pk).update(state="held", png=data, file="")
    JobImage.objects.filter(state="expired").update(png=b"")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("jobs", "0011_image_storage"),
    ]

    operations = [
        migrations.RunPython(to_storage, to_database),
    ]

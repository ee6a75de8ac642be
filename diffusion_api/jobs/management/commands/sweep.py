import logging
import time

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import connection

from diffusion_api.jobs import services

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Re-queue jobs whose worker lease expired, re-publish queued jobs the broker lost, move held images to the "
        "store and delete expired ones; repeat forever."
    )

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="sweep once and exit")
        parser.add_argument("--interval", type=float, default=None, help="seconds between sweeps (SWEEP_INTERVAL)")

    def handle(self, *args, once: bool, interval: float | None, **options):
        interval = settings.SWEEP_INTERVAL if interval is None else interval
        while True:
            try:
                report = services.job_sweep()
                swept_uploads = services.upload_sweep()
                if once:
                    self.stdout.write(
                        f"requeued {len(report.requeued)}, failed {len(report.failed)}, "
                        f"republished {len(report.republished)}, canceled {len(report.canceled)}, "
                        f"requeued alone {len(report.requeued_alone)}, expired uploads deleted {swept_uploads}"
                    )
            except Exception:  # the database or broker may be down for a while: try again next round
                logger.exception("sweep failed")
                connection.close()
            # Apart from the jobs: an object store outage must not stop lost jobs from being taken back.
            try:
                expired = services.image_expiry_sweep()
                moved = services.image_store_sweep()
                if once:
                    self.stdout.write(f"expired images {expired}, held images stored {moved}")
            except Exception:
                logger.exception("image sweep failed")
                connection.close()
            if once:
                return
            time.sleep(interval)

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand

from diffusion_api.accounts.services import token_issue


class Command(BaseCommand):
    help = "Create the user if needed and print a new API token for them (shown only now; earlier ones stay valid)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument(
            "--staff",
            action="store_true",
            help="make the user staff in the reviewers group (sees every job, reviews them in the admin)",
        )
        parser.add_argument("--password", help="set this password (for the admin and the token endpoint)")

    def handle(self, *args, username: str, staff: bool, password: str | None, **options):
        user, created = get_user_model().objects.get_or_create(username=username)
        if staff and not user.is_staff:
            user.is_staff = True
        if password:
            user.set_password(password)
        elif created:
            user.set_unusable_password()
        user.save()
        if staff:
            # is_staff only opens the admin's door; the reviewers group (migration 0007) holds review's permissions.
            user.groups.add(Group.objects.get(name="reviewers"))
        self.stdout.write(token_issue(user=user))

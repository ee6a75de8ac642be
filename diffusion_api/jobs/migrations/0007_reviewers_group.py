"""The `reviewers` group: exactly what reviewing jobs in the admin needs (`issue_token --staff` puts users in it).

The job admin's list, its page and its actions (cancel, retry, approve, flag) need `view_job` and `change_job`
(its form edits only `review_status`); the images on a job's page are an inline, shown only with `view_jobimage`.
No add or delete: jobs are made through the API, and a reviewer's verdict is kept, not the job removed.
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

GROUP = "reviewers"
PERMISSIONS = [("jobs", "view_job"), ("jobs", "change_job"), ("jobs", "view_jobimage")]


def create_reviewers(apps, schema_editor):
    # Permissions are made after migrate (post_migrate); make the jobs app's now, on a fresh database too.
    app_config = apps.get_app_config("jobs")
    app_config.models_module = True  # the migration state's stub has none, and create_permissions skips those
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name=GROUP)
    group.permissions.set(
        [Permission.objects.get(content_type__app_label=app, codename=codename) for app, codename in PERMISSIONS]
    )


def remove_reviewers(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name=GROUP).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0006_batch_isolation_step_cost_fair_order"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_reviewers, remove_reviewers)]

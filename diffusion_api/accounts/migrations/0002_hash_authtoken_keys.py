"""Existing DRF tokens (clear text in authtoken_token) become digests; the clear-text rows are deleted.

Clients keep using the keys they hold. Going back cannot restore clear-text keys, so the reverse does nothing (the
digests then go with the table when 0001 is reversed, and users need new keys).
"""

import hashlib

from django.db import migrations


def hash_existing_keys(apps, schema_editor):
    Token = apps.get_model("authtoken", "Token")
    ApiToken = apps.get_model("accounts", "ApiToken")
    for token in Token.objects.all():
        ApiToken.objects.create(
            user_id=token.user_id,
            digest=hashlib.sha256(token.key.encode()).hexdigest(),
            prefix=token.key[:8],
            created_at=token.created,
        )
    Token.objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("authtoken", "0004_alter_tokenproxy_options"),
    ]

    operations = [migrations.RunPython(hash_existing_keys, migrations.RunPython.noop)]

"""API tokens in the admin: who holds which key (by its prefix), when it was issued; revoke by deleting."""

from django.contrib import admin
from rest_framework.authtoken.models import TokenProxy

from diffusion_api.accounts.models import ApiToken

# DRF's token admin lists every key in clear; its table is emptied by migration 0002 and must not come back.
if admin.site.is_registered(TokenProxy):
    admin.site.unregister(TokenProxy)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("key_prefix", "user", "created_at")
    list_select_related = ("user",)
    search_fields = ("user__username", "prefix")
    fields = ("key_prefix", "user", "created_at")
    readonly_fields = fields

    @admin.display(description="key")
    def key_prefix(self, token: ApiToken) -> str:
        return f"{token.prefix}…"

    def has_add_permission(self, request) -> bool:
        return False  # a key is shown once when issued: `manage.py issue_token` or POST auth/token/

    def has_change_permission(self, request, obj=None) -> bool:
        return False

"""Query helpers shared by the apps' selectors."""

from django.db.models import QuerySet


def one_or_none(queryset: QuerySet):
    """The one row a unique lookup finds, or None. Cheaper than `.first()`, which orders the rows (by the model's
    ordering or the key): compiling that ORDER BY was a measurable part of a status read in a py-spy profile."""
    rows = list(queryset.order_by()[:1])
    return rows[0] if rows else None

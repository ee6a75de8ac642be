"""Celery tasks: the only place where Django meets torch."""

"""The Celery range the instrumentor supports (checked by ``instrumentation_dependencies``)."""

_instruments = ("celery >= 5.0, < 6.0",)

"""The Celery range the instrumentor supports (checked by ``instrumentation_dependencies``)."""

_instruments = ("celery >= 5.3.6, < 6.0",)

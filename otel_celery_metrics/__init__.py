"""OpenTelemetry metrics for Celery workers, exact under the prefork pool.

The package's rooms, top to bottom (each imports only those below it; ``[tool.importlinter]``
in pyproject.toml enforces it, ``docs/architecture.md`` draws it):

- :mod:`.instrumentor`, :func:`setup_metrics` -- entry points: wire everything together;
- :mod:`.endpoint` -- serving ``/metrics``; :mod:`.pool` -- the prefork pool;
- :mod:`.worker` -- the Celery hooks;
- :mod:`.sdk_adapter` -- the one place that touches OpenTelemetry SDK internals;
- :mod:`.recording` -- the in-process instruments and their settings;
- :mod:`.core` -- what both ways in share (the metric table, caps, parsing, rules);
- :mod:`.exporter` -- the standalone exporter, beside the rest: it imports only the core.

Public names are those in ``__all__`` below and the exporter's command line; modules are
organised for the maintainers and may move.

Importing this package starts no thread, binds no port, creates no provider and reads
no environment; :class:`CeleryMetricsInstrumentor` and :func:`setup_metrics` do the work
when called.
"""

from otel_celery_metrics._sdk_setup import setup_metrics
from otel_celery_metrics.core.metric_table import METRICS, MetricSpec
from otel_celery_metrics.instrumentor import CeleryMetricsInstrumentor
from otel_celery_metrics.recording.settings import SettingError, Settings, settings_from_env
from otel_celery_metrics.version import __version__

__all__ = [
    "METRICS",
    "CeleryMetricsInstrumentor",
    "MetricSpec",
    "SettingError",
    "Settings",
    "__version__",
    "settings_from_env",
    "setup_metrics",
]

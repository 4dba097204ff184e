"""OpenTelemetry metrics for Celery workers, exact under the prefork pool.

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

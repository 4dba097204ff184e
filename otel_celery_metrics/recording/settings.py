"""Our own settings (``OTEL_CELERY_METRICS_*``), parsed from an injected environment mapping.

Nothing here reads :data:`os.environ` by itself: callers pass the mapping, so importing
the package reads no environment and tests pass plain dicts.

A bad value never stops a worker: :func:`settings_from_env` returns the defaults for the
bad settings together with one :class:`SettingError` per bad variable, and the
instrumentor logs each as a single error line naming the variable and the value.
Metrics must not be the reason a worker refuses to start.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields

from otel_celery_metrics.core import values
from otel_celery_metrics.core.metric_table import DEFAULT_SECONDS_BUCKETS, NARROWABLE_ATTRIBUTES
from otel_celery_metrics.core.parsing import parse_bool, parse_buckets, parse_seconds

PREFIX = "OTEL_CELERY_METRICS_"

#: The Prometheus SDK path folds everything past this many series of one metric into a
#: single ``otel_metric_overflow`` series; our series cap must stay below it.
SDK_CARDINALITY_LIMIT = 2000


class SettingError(ValueError):
    """A setting has a value we cannot use; the message names the variable and the value."""

    def __init__(self, variable: str, value: str, problem: str) -> None:
        self.variable = variable
        self.value = value
        super().__init__(f"{variable}={value!r}: {problem}")


@dataclass(frozen=True)
class Settings:
    """Everything the instrumentor can be told. Defaults are the documented ones."""

    #: Histogram boundaries (seconds) of ``celery_task_runtime_seconds``.
    runtime_buckets: tuple[float, ...] = DEFAULT_SECONDS_BUCKETS
    #: Histogram boundaries (seconds) of ``celery_task_queue_wait_seconds``.
    queue_wait_buckets: tuple[float, ...] = DEFAULT_SECONDS_BUCKETS
    #: Distinct task names recorded before new ones become ``__overflow__``.
    max_task_names: int = 500
    #: Distinct queues recorded before new ones become ``__overflow__``.
    max_queues: int = 50
    #: Distinct attribute sets per metric before new ones are folded into one
    #: all-``__overflow__`` series. Below the SDK's silent limit of 2000.
    max_series_per_metric: int = 1500
    #: Attribute keys kept; the others are dropped from every measurement.
    attributes: frozenset[str] = field(default_factory=lambda: frozenset(NARROWABLE_ATTRIBUTES))
    #: Queue reported when the queue cannot be told (docs/metrics.md says where it is used).
    default_queue: str = "unknown"
    #: Whether Prometheus series carry ``otel_scope_name``/``otel_scope_version`` labels.
    prometheus_scope_labels: bool = False
    #: ``auto``: link runtime points to the task's trace (exemplars) when
    #: opentelemetry-instrumentation-celery traces the worker; ``off``: never (no
    #: per-task work in pool processes at all).
    exemplars: str = "auto"
    #: Relay what OpenTelemetry records in prefork pool children (application metrics,
    #: other instrumentations' metrics, spans) to the worker's main process; ``false``:
    #: children keep it (and, under OTLP, export nothing), as before the relay.
    relay: bool = True
    #: Prometheus exporter-toolkit web config file (TLS, basic auth) for the in-process
    #: ``/metrics``; empty: plain HTTP, as opentelemetry-exporter-prometheus serves it.
    web_config_file: str = ""
    #: Seconds: the longest queue wait (or beat lateness) recorded; a longer one is refused
    #: and counted (see :mod:`otel_celery_metrics.core.values`).
    max_queue_wait: float = values.DEFAULT_MAX_QUEUE_WAIT
    #: Seconds: the longest task runtime recorded.
    max_runtime: float = values.DEFAULT_MAX_RUNTIME
    #: Seconds a producer's publish time (or an ETA) may lie after the task's start and
    #: still count as a wait of 0 (clock skew); further ahead, the wait is refused.
    clock_skew_tolerance: float = values.DEFAULT_CLOCK_SKEW_TOLERANCE

    def bounds(self) -> values.Bounds:
        """The plausible range of times from outside (:mod:`.core.values`)."""
        return values.Bounds(self.max_queue_wait, self.max_runtime, self.clock_skew_tolerance)


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"expected a whole number from {low} to {high}") from None
        if not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}")
        return value

    return parse


def _parse_attributes(raw: str) -> frozenset[str]:
    keys = frozenset(part.strip() for part in raw.split(",") if part.strip())
    unknown = sorted(keys - set(NARROWABLE_ATTRIBUTES))
    if unknown:
        known = ",".join(NARROWABLE_ATTRIBUTES)
        raise ValueError(f"unknown attribute {', '.join(unknown)}; choose from {known}")
    return keys


def _parse_exemplars(raw: str) -> str:
    lowered = raw.strip().lower()
    if lowered in ("auto", "off"):
        return lowered
    raise ValueError("expected auto or off")


def _parse_queue(raw: str) -> str:
    if not raw.strip():
        raise ValueError("expected a non-empty queue name")
    return raw.strip()


def _parse_path(raw: str) -> str:
    if not raw.strip():
        raise ValueError("expected a file path")
    return raw.strip()


_PARSERS: dict[str, Callable[[str], object]] = {
    "runtime_buckets": parse_buckets,
    "queue_wait_buckets": parse_buckets,
    "max_task_names": _int_between(1, 100_000),
    "max_queues": _int_between(1, 10_000),
    "max_series_per_metric": _int_between(1, SDK_CARDINALITY_LIMIT - 1),
    "attributes": _parse_attributes,
    "default_queue": _parse_queue,
    "prometheus_scope_labels": parse_bool,
    "exemplars": _parse_exemplars,
    "relay": parse_bool,
    "web_config_file": _parse_path,
    "max_queue_wait": parse_seconds,
    "max_runtime": parse_seconds,
    "clock_skew_tolerance": parse_seconds,
}


def variable_name(setting: str) -> str:
    """The environment variable of a :class:`Settings` field."""
    return PREFIX + setting.upper()


def settings_from_env(environ: Mapping[str, str]) -> tuple[Settings, list[SettingError]]:
    """Parse ``OTEL_CELERY_METRICS_*`` from ``environ``.

    Returns the settings (defaults where a variable is unset or bad) and the errors.
    """
    values: dict[str, object] = {}
    errors: list[SettingError] = []
    for f in fields(Settings):
        variable = variable_name(f.name)
        raw = environ.get(variable)
        if raw is None or raw == "":
            continue
        try:
            values[f.name] = _PARSERS[f.name](raw)
        except ValueError as exc:
            errors.append(SettingError(variable, raw, f"{exc}; using the default"))
    return Settings(**values), errors  # type: ignore[arg-type]


def documented_variables() -> list[tuple[str, str]]:
    """(variable, default) of every setting, for docs and the docs test."""
    out = []
    for f in fields(Settings):
        default = f.default_factory() if callable(f.default_factory) else f.default
        if isinstance(default, tuple):
            shown = ",".join(f"{v:g}" for v in default)
        elif isinstance(default, frozenset):
            shown = ",".join(k for k in NARROWABLE_ATTRIBUTES if k in default)
        elif isinstance(default, bool):
            shown = str(default).lower()
        elif isinstance(default, float):
            shown = f"{default:g}"
        else:
            shown = str(default)
        out.append((variable_name(f.name), shown))
    return out

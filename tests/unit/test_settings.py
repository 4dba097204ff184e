"""OTEL_CELERY_METRICS_* parsing: values, defaults, and errors that name variable and value."""

from __future__ import annotations

import pytest

from otel_celery_metrics.core import metric_table as mt
from otel_celery_metrics.recording.settings import (
    SDK_CARDINALITY_LIMIT,
    SettingError,
    Settings,
    documented_variables,
    settings_from_env,
)


def test_no_variables_give_the_documented_defaults() -> None:
    settings, errors = settings_from_env({})
    assert errors == []
    assert settings == Settings()
    assert settings.runtime_buckets == mt.DEFAULT_SECONDS_BUCKETS
    assert settings.max_series_per_metric < SDK_CARDINALITY_LIMIT
    assert settings.prometheus_scope_labels is False
    assert settings.attributes == frozenset(mt.NARROWABLE_ATTRIBUTES)


def test_empty_values_count_as_unset() -> None:
    settings, errors = settings_from_env({"OTEL_CELERY_METRICS_MAX_QUEUES": ""})
    assert errors == []
    assert settings.max_queues == Settings().max_queues


def test_every_setting_parses() -> None:
    settings, errors = settings_from_env(
        {
            "OTEL_CELERY_METRICS_RUNTIME_BUCKETS": "0.5, 1,2.5",
            "OTEL_CELERY_METRICS_QUEUE_WAIT_BUCKETS": "1,60",
            "OTEL_CELERY_METRICS_MAX_TASK_NAMES": "20",
            "OTEL_CELERY_METRICS_MAX_QUEUES": "3",
            "OTEL_CELERY_METRICS_MAX_SERIES_PER_METRIC": "1999",
            "OTEL_CELERY_METRICS_ATTRIBUTES": "task_name, state",
            "OTEL_CELERY_METRICS_DEFAULT_QUEUE": " celery ",
            "OTEL_CELERY_METRICS_PROMETHEUS_SCOPE_LABELS": "TRUE",
            "OTEL_CELERY_METRICS_MAX_QUEUE_WAIT": "86400",
            "OTEL_CELERY_METRICS_MAX_RUNTIME": "3600.5",
            "OTEL_CELERY_METRICS_CLOCK_SKEW_TOLERANCE": "30",
        }
    )
    assert errors == []
    assert settings == Settings(
        runtime_buckets=(0.5, 1.0, 2.5),
        queue_wait_buckets=(1.0, 60.0),
        max_task_names=20,
        max_queues=3,
        max_series_per_metric=1999,
        attributes=frozenset({"task_name", "state"}),
        default_queue="celery",
        prometheus_scope_labels=True,
        max_queue_wait=86400.0,
        max_runtime=3600.5,
        clock_skew_tolerance=30.0,
    )
    assert (settings.bounds().max_queue_wait, settings.bounds().clock_skew_tolerance) == (
        86400.0, 30.0)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_CELERY_METRICS_RUNTIME_BUCKETS", "abc"),
        ("OTEL_CELERY_METRICS_RUNTIME_BUCKETS", "1,0.5"),
        ("OTEL_CELERY_METRICS_RUNTIME_BUCKETS", "1,1"),
        ("OTEL_CELERY_METRICS_RUNTIME_BUCKETS", "-1,2"),
        ("OTEL_CELERY_METRICS_RUNTIME_BUCKETS", "1,inf"),
        ("OTEL_CELERY_METRICS_QUEUE_WAIT_BUCKETS", ",,"),
        ("OTEL_CELERY_METRICS_MAX_TASK_NAMES", "many"),
        ("OTEL_CELERY_METRICS_MAX_TASK_NAMES", "0"),
        ("OTEL_CELERY_METRICS_MAX_QUEUES", "2.5"),
        # At or past the SDK's silent limit our cap would never act.
        ("OTEL_CELERY_METRICS_MAX_SERIES_PER_METRIC", str(SDK_CARDINALITY_LIMIT)),
        ("OTEL_CELERY_METRICS_ATTRIBUTES", "task_name,task_id"),
        ("OTEL_CELERY_METRICS_DEFAULT_QUEUE", "   "),
        ("OTEL_CELERY_METRICS_PROMETHEUS_SCOPE_LABELS", "maybe"),
        ("OTEL_CELERY_METRICS_MAX_QUEUE_WAIT", "7d"),
        ("OTEL_CELERY_METRICS_MAX_QUEUE_WAIT", "0"),
        ("OTEL_CELERY_METRICS_MAX_RUNTIME", "inf"),
        ("OTEL_CELERY_METRICS_CLOCK_SKEW_TOLERANCE", "-5"),
        ("OTEL_CELERY_METRICS_CLOCK_SKEW_TOLERANCE", "nan"),
    ],
)
def test_a_bad_value_gives_one_error_naming_variable_and_value_and_keeps_the_default(
    variable: str, value: str
) -> None:
    settings, errors = settings_from_env({variable: value})
    assert settings == Settings()
    assert len(errors) == 1
    error = errors[0]
    assert isinstance(error, SettingError)
    assert (error.variable, error.value) == (variable, value)
    message = str(error)
    assert variable in message
    assert repr(value) in message
    assert "default" in message
    assert "\n" not in message


def test_one_bad_variable_does_not_spoil_the_others() -> None:
    settings, errors = settings_from_env(
        {"OTEL_CELERY_METRICS_RUNTIME_BUCKETS": "abc", "OTEL_CELERY_METRICS_MAX_QUEUES": "7"}
    )
    assert [e.variable for e in errors] == ["OTEL_CELERY_METRICS_RUNTIME_BUCKETS"]
    assert settings.runtime_buckets == mt.DEFAULT_SECONDS_BUCKETS
    assert settings.max_queues == 7


def test_an_unknown_attribute_error_lists_the_choices() -> None:
    _, [error] = settings_from_env({"OTEL_CELERY_METRICS_ATTRIBUTES": "hostname"})
    assert "hostname" in str(error)
    assert ",".join(mt.NARROWABLE_ATTRIBUTES) in str(error)


def test_documented_variables_cover_every_setting_with_a_parseable_default() -> None:
    documented = dict(documented_variables())
    assert len(documented) == len(Settings.__dataclass_fields__)
    # Feeding the documented defaults back in gives the defaults, without errors.
    settings, errors = settings_from_env(documented)
    assert errors == []
    assert settings == Settings()

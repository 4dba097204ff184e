"""The public API: an explicit, sorted ``__all__`` whose every name imports."""

from __future__ import annotations

import importlib
import importlib.metadata

import otel_celery_metrics


def _isort_style(name: str) -> tuple[int, str]:
    # The order ruff's RUF022 keeps: CONSTANTS, then Classes, then everything else.
    if name.isupper():
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


def test_all_is_sorted_and_without_duplicates() -> None:
    names = list(otel_celery_metrics.__all__)
    assert names == sorted(names, key=_isort_style)
    assert len(names) == len(set(names))


def test_every_public_name_is_importable_from_the_package() -> None:
    module = importlib.import_module("otel_celery_metrics")
    for name in otel_celery_metrics.__all__:
        assert getattr(module, name, None) is not None, name
        namespace: dict[str, object] = {}
        exec(f"from otel_celery_metrics import {name}", namespace)  # noqa: S102
        assert namespace[name] is getattr(module, name)


def test_public_names_are_not_private_modules() -> None:
    assert not [n for n in otel_celery_metrics.__all__ if n.startswith("_") and n != "__version__"]


def test_version_matches_the_installed_distribution() -> None:
    assert otel_celery_metrics.__version__ == importlib.metadata.version("otel-celery-metrics")


def test_the_entry_point_names_our_instrumentor_not_celery() -> None:
    (entry_point,) = [
        ep
        for ep in importlib.metadata.entry_points(group="opentelemetry_instrumentor")
        if ep.value.startswith("otel_celery_metrics")
    ]
    assert entry_point.name == "celery_metrics"
    assert entry_point.load() is otel_celery_metrics.CeleryMetricsInstrumentor

"""The in-process instruments: measurements in, OpenTelemetry data out.

- :mod:`.recorder` -- :class:`~.recorder.Recorder`, the aggregates behind every metric of
  the table (counters, self-aggregated histograms with exemplars, gauges' callbacks);
- :mod:`.admission` -- which attribute values a measurement is recorded with (narrowing,
  caps, the series cap);
- :mod:`.histograms` -- the recorder's histograms as SDK metric data, per reader;
- :mod:`.sinks` -- the two shapes of "where measurements go" (protocols);
- :mod:`.settings` -- the ``OTEL_CELERY_METRICS_*`` settings.

Knows nothing of Celery: the worker's hooks (:mod:`otel_celery_metrics.worker`) and the
pool bridge (:mod:`otel_celery_metrics.pool`) feed it.
"""

"""Serving ``/metrics`` from a worker (or beat): which process serves, where, and how.

- :mod:`.sdk_hooks` -- the SDK's pre/post-init hooks: which metric readers a process gets,
  decided before the SDK builds them;
- :mod:`.exporter_choice` -- reading and changing ``OTEL_METRICS_EXPORTER``; the busy-port
  check for programs that are no worker;
- :mod:`.server` -- the per-node port plan (``celery multi``) and a server that retries a
  busy port in the background;
- :mod:`.reader` -- our Prometheus metric reader (the ``celery_metrics_prometheus`` entry
  point);
- :mod:`.guarded_web` -- the endpoint behind a web config file (TLS, basic auth).
"""

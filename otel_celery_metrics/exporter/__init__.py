"""The standalone exporter: reads the Celery event bus and serves Prometheus metrics.

No application change: it connects to the broker the workers use, reads their events
(workers started with ``-E``), polls queue depths in the background and publishes the
metric table's series through the OpenTelemetry Prometheus reader. The in-process
instrumentor never imports this subpackage.

Modules, one job each:

- :mod:`.config` -- the typed configuration and broker-URL masking;
- :mod:`.store` -- counters and gauges the handlers update, with cardinality caps;
- :mod:`.handlers` -- event type -> handler table, tolerant of hostile events;
- :mod:`.liveness` -- workers from heartbeats: up/down, forgetting, events-disabled;
- :mod:`._wire` -- the Redis pub/sub wire format and event envelope decoding;
- :mod:`.receiver` -- broker connection, receive loop, reconnects;
- :mod:`.probes` -- queue depth (Redis priorities, RabbitMQ passive declare) and inspect;
- :mod:`.instruments` -- the store and liveness as OpenTelemetry instruments;
- :mod:`.compat` -- danihodovic/celery-exporter's names for migration;
- :mod:`.http` -- ``/metrics`` and ``/health``;
- :mod:`.service` -- wires it together; :mod:`.cli` -- the command line.

Importing any of them starts no thread, binds no port and reads no environment.
"""

from __future__ import annotations

from otel_celery_metrics.exporter.config import ExporterConfig, mask_url

__all__ = ["ExporterConfig", "mask_url"]

"""The standalone exporter: reads the Celery event bus, serves Prometheus metrics, pushes OTLP.

No application change: it connects to the broker the workers use, reads their events
(workers started with ``-E``), polls queue depths in the background and publishes the
metric table's series through the OpenTelemetry Prometheus reader, an OTLP reader, or
both. It imports only :mod:`otel_celery_metrics.core` of the package, and nothing
in-process imports it (import contracts in pyproject.toml).

Modules, one job each:

- :mod:`.config` -- the typed configuration and broker-URL masking;
- :mod:`.cli` -- the command line (flags and ``OTEL_CELERY_EXPORTER_*`` variables);
- :mod:`.broker_tls` -- TLS to the broker (``broker_use_ssl`` from the TLS settings);
- :mod:`.capabilities` -- whether the transport carries events and broadcasts (asked of
  kombu at start); without them the exporter runs in probe-only mode (SQS);
- :mod:`.transport_options` -- kombu transport options typed from the command line, and
  the start-up checks of a broker URL (Sentinel's ``master_name``, a known transport);
- :mod:`.receiver` -- broker connection, receive loop, reconnects; the Redis pub/sub reader,
  kombu's for every other transport, and the stand-in of probe-only mode;
- :mod:`.amqp_receiver` -- the RabbitMQ reader (a bounded event queue, frames read directly);
- :mod:`._amqp_frames` -- AMQP 0-9-1 frame splitting and the few methods that reader sends;
- :mod:`._wire` -- the Redis pub/sub wire format and event envelope decoding;
- :mod:`.handlers` -- event type -> handler table, tolerant of hostile events;
- :mod:`.tracker` -- per-task state between events (bounded);
- :mod:`.held` -- events held back until the task-sent event they need arrives;
- :mod:`.store` -- counters the handlers update, with the cardinality caps;
- :mod:`.liveness` -- workers from heartbeats: up/down, forgetting, events-disabled;
- :mod:`.probes` -- queue depth (Redis priorities, RabbitMQ passive declare), Redis'
  unacked messages, and inspect;
- :mod:`.sqs_depth` -- SQS queue depth (waiting, in flight, delayed) and kombu's SQS names;
- :mod:`.keda_scaler` -- KEDA's external scaler gRPC API (optional, ``--keda-scaler-port``);
- :mod:`.instruments` -- the store and liveness as OpenTelemetry instruments;
- :mod:`.outputs` -- where they go: the readers for /metrics and OTLP, and the resource;
- :mod:`.compat` -- danihodovic/celery-exporter's names for migration;
- :mod:`.http` -- ``/metrics`` and ``/health``;
- :mod:`.service` -- wires it together.

Importing any of them starts no thread, binds no port and reads no environment.
"""

from __future__ import annotations

from otel_celery_metrics.exporter.config import ExporterConfig, mask_url

__all__ = ["ExporterConfig", "mask_url"]

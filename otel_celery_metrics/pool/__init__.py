"""Everything about the prefork pool: one worker, one endpoint, one identity, exact.

A measurement taken in a pool child travels: :mod:`.child_forwarder` (the child's buffer
and its end of the socketpair, never blocking a task) -> :mod:`.codec` (the datagram
format, the one owner of the wire) -> :mod:`.prefork` (the fork bridge in the main process:
reads, decodes, records into the recorder; :mod:`.fence` keeps forks out of collections).
What OpenTelemetry itself recorded in the child (application metrics, other
instrumentations, spans) goes through :mod:`.relay` (the pool-child relay) into
:mod:`.relay_store` (the main process' merged, cumulative view every reader collects).

SDK internals the relay needs are :mod:`otel_celery_metrics.sdk_adapter.pool_relay`'s, and
relayed spans as OTLP bytes :mod:`otel_celery_metrics.sdk_adapter.span_export`'s.
"""

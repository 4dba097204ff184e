"""What the broker's kombu transport can carry for the exporter, asked of kombu at start.

Celery's events and its broadcasts (``inspect``, ``enable_events``) both travel through
fanout or topic exchanges. A transport without fanout (kombu's SQS, and any other whose
``implements.exchange_type`` lacks it) carries neither: no worker event ever arrives, no
broadcast is ever answered, and subscribing would only leave an event queue behind on
the broker. There the exporter runs in *probe-only* mode (:mod:`.service`): queue depth
and its own health, nothing that needs events.

Asking kombu builds the transport object only (no connection), so this is cheap and
works while the broker is down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BrokerCapabilities:
    """``transport``: kombu's driver name (``redis``, ``amqp``, ``sqs``, ...)."""

    transport: str
    fanout: bool

    @property
    def events(self) -> bool:
        """Celery events and broadcasts can reach the exporter (both need fanout)."""
        return self.fanout

    def describe(self) -> str:
        if self.events:
            return f"transport {self.transport}: events and broadcasts"
        return (
            f"transport {self.transport} has no fanout exchange, so it carries no Celery "
            "events and no broadcasts (inspect, enable_events): probe-only mode, queue depth "
            "only; no event queue is created and no task, worker or inspect series is "
            "reported (see docs/exporter.md, Brokers)"
        )


def detect(app: Any) -> BrokerCapabilities:
    """The capabilities of ``app``'s broker transport (no connection is made)."""
    conn = app.connection_for_read()
    try:
        transport = conn.transport
        kinds = getattr(getattr(transport, "implements", None), "exchange_type", None)
        # A transport that does not say is taken at its word for the old default (all
        # exchange types), as kombu itself does.
        fanout = True if kinds is None else "fanout" in kinds
        name = str(getattr(transport, "driver_name", None) or conn.transport_cls)
        return BrokerCapabilities(transport=name, fanout=fanout)
    finally:
        conn.release()

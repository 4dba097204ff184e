"""Where the ``queue`` label comes from: the queue a message was consumed from or sent to.

A routing key is not a queue. With Celery's default routing the two are equal, but with
a topic exchange (``images.#`` bound, ``images.resize.<user id>`` published), a fanout or
a headers exchange the routing key is whatever the producer chose: as a label it is
wrong (one queue shows as many) and unbounded. So neither the worker nor the producer
ever labels by a raw routing key.

**Worker.** The worker knows which of its queues a message came from only at the moment
kombu hands it over: py-amqp delivers by consumer tag, the virtual transports (Redis,
SQS, ...) call one callback per queue, and neither puts the queue's name on the message
(Celery's request keeps only exchange and routing key). The worker's consume hook
(:class:`otel_celery_metrics.worker.consume_hook.ConsumeHook`) wraps
:meth:`kombu.Queue.consume`, the one call every transport's consumer goes through, so
the callback registered for a queue writes that queue's name into the delivered
message's ``delivery_info`` (key :data:`DELIVERED_FROM`). Exact for every broker,
exchange type and routing style; it costs one dict copy per message. A queue consumed
before the hook was installed (instrumentation switched on after the worker started
consuming) has no such callback: :func:`delivered_queue` then falls back (see there).

**Producer.** Celery resolves a destination queue for every task (``queue=``,
``task_routes``, the default queue) and passes it in ``before_task_publish``'s
``declare``; an explicit ``exchange=``/``routing_key=`` may send the message elsewhere.
:func:`published_queue` takes the resolved queue only when its own binding matches the
exchange and routing key the message is published with (:func:`binding_matches`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_logger = logging.getLogger(__name__)

#: ``delivery_info`` key holding the name of the queue a message was consumed from.
DELIVERED_FROM = "otel_celery_queue"


def delivered_queue(delivery_info: Any, default: str) -> str:
    """The queue a delivered message came from, as the worker's consume hook wrote it; else
    ``default`` (never the routing key)."""
    if delivery_info.__class__ is dict:
        queue = delivery_info.get(DELIVERED_FROM)
        if queue:
            return str(queue)
    return default


def fallback_queue(delivery_info: Any, consumed: Iterable[str], default: str) -> str:
    """The queue of a message whose consumer the hook did not wrap: the routing key only
    when it is the name of a queue this worker consumes (Celery's default routing and
    ``task_routes`` by queue name publish with the queue name as routing key), else
    ``default``. Bounded either way: by the worker's queues, or one value."""
    if delivery_info.__class__ is dict:
        key = delivery_info.get("routing_key")
        if key and key in consumed:
            return str(key)
    return default


# -- bindings: does a message published with (exchange, routing key, headers) reach a queue?


def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching: dot-separated words, ``*`` one word, ``#`` zero or more."""
    words, keys = pattern.split("."), routing_key.split(".")
    # reachable[j]: the pattern's words so far can consume the key's first j words.
    reachable = [True] + [False] * len(keys)
    for word in words:
        if word == "#":
            for j in range(1, len(keys) + 1):
                reachable[j] = reachable[j] or reachable[j - 1]
        else:
            reachable = [False] + [
                reachable[j] and (word == "*" or word == keys[j]) for j in range(len(keys))
            ]
    return reachable[-1]


def binding_matches(
    exchange_type: str,
    binding_key: str,
    arguments: Mapping[str, Any] | None,
    routing_key: str,
    headers: Mapping[str, Any] | None,
) -> bool | None:
    """Whether a binding of an exchange of ``exchange_type`` takes the message; None for
    an exchange type whose rules we do not know (a plugin's)."""
    if exchange_type == "direct":
        return binding_key == routing_key
    if exchange_type == "topic":
        return topic_matches(binding_key, routing_key)
    if exchange_type == "fanout":
        return True
    if exchange_type == "headers":
        return _headers_match(arguments or {}, headers)
    return None


def _headers_match(arguments: Mapping[str, Any], headers: Mapping[str, Any] | None) -> bool | None:
    if headers is None:
        return None  # the message's headers are not known (task-sent events)
    hits = [
        k in headers and headers[k] == v
        for k, v in arguments.items()
        if not str(k).startswith("x-")
    ]
    if arguments.get("x-match", "all") in ("any", "any-with-x"):
        return any(hits)
    return all(hits)


def _bindings(queue: Any) -> list[tuple[Any, str, Mapping[str, Any] | None]]:
    """(exchange, binding key, arguments) of a kombu Queue's declared bindings."""
    bindings = getattr(queue, "bindings", None)
    if bindings:
        return [(b.exchange, b.routing_key or "", b.arguments) for b in bindings]
    return [(queue.exchange, queue.routing_key or "", queue.binding_arguments)]


def published_queue(
    declare: Any, exchange: Any, routing_key: Any, headers: Any, default: str
) -> str:
    """The queue Celery resolved for a message (``before_task_publish``'s ``declare``),
    when the message is published so that it reaches that queue; else ``default``.

    The anonymous exchange delivers to the queue named by the routing key. Otherwise a
    resolved queue counts when one of its bindings to ``exchange`` takes the routing key
    (and headers). A message that an explicit ``exchange=``/``routing_key=`` sends past
    its resolved queue, to queues the producer does not know, is labelled ``default``.
    """
    exchange_name = getattr(exchange, "name", exchange) or ""
    key = str(routing_key or "")
    for queue in declare or ():
        name = getattr(queue, "name", None)
        if not name or not hasattr(queue, "exchange"):
            continue  # an Exchange to declare, or a Broadcast queue
        if not exchange_name:
            if key == name:
                return str(name)
            continue
        for bound, binding_key, arguments in _bindings(queue):
            if getattr(bound, "name", bound) != exchange_name:
                continue
            kind = str(getattr(bound, "type", "direct") or "direct")
            headers_map = headers if isinstance(headers, Mapping) else {}
            if binding_matches(kind, binding_key, arguments, key, headers_map):
                return str(name)
    return default


# -- the standalone exporter: the same question from task-sent events and inspect replies


@dataclass(frozen=True)
class Binding:
    """One binding of a queue, as a worker's ``inspect active_queues`` reply shows it."""

    exchange: str
    exchange_type: str
    key: str
    arguments: Mapping[str, Any] | None = None


def bindings_from_reply(queue: Mapping[str, Any]) -> tuple[Binding, ...]:
    """The bindings of one queue of an ``active_queues`` reply (``Queue.as_dict``)."""

    def exchange_of(value: Any) -> tuple[str, str]:
        if isinstance(value, Mapping):
            return str(value.get("name") or ""), str(value.get("type") or "direct")
        return str(value or ""), "direct"

    declared = queue.get("bindings")
    if isinstance(declared, list) and declared:
        out = []
        for b in declared:
            if isinstance(b, Mapping):
                name, kind = exchange_of(b.get("exchange"))
                out.append(Binding(name, kind, str(b.get("routing_key") or ""),
                                   b.get("arguments") or None))
        return tuple(out)
    name, kind = exchange_of(queue.get("exchange"))
    return (Binding(name, kind, str(queue.get("routing_key") or ""),
                    queue.get("binding_arguments") or None),)


def sent_destination(
    resolved: str | None,
    exchange: Any,
    routing_key: Any,
    known: Mapping[str, tuple[Binding, ...]],
) -> str | None:
    """The queue a task-sent event's message went to, or None when it cannot be told.

    ``resolved`` is the event's ``queue`` (the queue Celery resolved); ``known`` the
    bindings of the queues the workers consume. The resolved queue stands unless its
    known bindings show that the event's exchange and routing key bypass it; then the
    one known queue they reach, if exactly one does. The event carries no message
    headers, so a headers exchange's bindings cannot be checked: the resolved queue
    stands.
    """
    if exchange is None:
        return resolved  # a producer that does not say where it published
    exchange = str(exchange)
    key = str(routing_key or "")
    if not exchange:  # the anonymous exchange delivers to the queue the key names
        return resolved if resolved == key else (key if key in known else None)

    def reaches(bindings: tuple[Binding, ...]) -> bool | None:
        verdicts = [
            binding_matches(b.exchange_type, b.key, b.arguments, key, None)
            for b in bindings
            if b.exchange == exchange
        ]
        if any(v is True for v in verdicts):
            return True
        return None if any(v is None for v in verdicts) else False

    own = known.get(resolved) if resolved is not None else None
    if own is not None and reaches(own) is not False:
        return resolved
    reached = [name for name, bindings in known.items() if reaches(bindings)]
    if len(reached) == 1:
        return reached[0]
    # No worker we know consumes the resolved queue, and the known bindings do not
    # point elsewhere: Celery's resolved queue stands.
    return resolved if own is None and not reached else None

"""Cost per delivered message of naming its queue (the consume hook's callback wrapper).

A worker's consumer calls one callback per delivered message. With our instrumentation
that callback is wrapped (``otel_celery_metrics.core.routing.ConsumeHook``) to write the
queue's name into the message's ``delivery_info`` (a dict copy). This times a delivery
of a py-amqp-shaped message through the bare callback and through the wrapped one, in
the same run, and prints medians over rounds and the extra cost.

    .venv/bin/python bench/queue_stamp.py [--messages 200000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import timeit
from typing import Any

from otel_celery_metrics.core.routing import ConsumeHook


class _Message:
    __slots__ = ("delivery_info",)


def _deliver(callback: Any) -> None:
    message = _Message()
    message.delivery_info = {
        "consumer_tag": "None1", "delivery_tag": 1, "redelivered": False,
        "exchange": "media", "routing_key": "images.resize.user0",
    }
    callback(message)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    def callback(_message: Any) -> None:
        return None

    # The wrapper kombu.Queue.consume installs, taken through the public hook.
    from kombu.entity import Queue

    captured: dict[str, Any] = {}

    def fake_consume(queue: Any, consumer_tag: str = "", callback: Any = None,
                     *rest: Any, **kw: Any) -> None:
        captured["callback"] = callback

    original = Queue.consume
    Queue.consume = fake_consume  # type: ignore[method-assign,assignment]
    hook = ConsumeHook()
    try:
        hook.install()
        Queue("images").consume("tag", callback)
    finally:
        hook.uninstall()
        Queue.consume = original  # type: ignore[method-assign]
    wrapped = captured["callback"]

    times: dict[str, list[float]] = {"bare": [], "stamped": []}
    for i in range(args.rounds):
        order = (("bare", callback), ("stamped", wrapped))
        for name, cb in order if i % 2 == 0 else order[::-1]:
            seconds = timeit.timeit(lambda cb=cb: _deliver(cb), number=args.messages)
            times[name].append(seconds / args.messages * 1e6)
    bare, stamped = (statistics.median(times[k]) for k in ("bare", "stamped"))
    print(f"messages={args.messages} rounds={args.rounds} (medians, µs of wall time per message)")
    print(f"bare     {bare:.3f}")
    print(f"stamped  {stamped:.3f}   extra {stamped - bare:+.3f}   ratio {stamped / bare:.2f}")


if __name__ == "__main__":
    main()

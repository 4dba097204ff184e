"""The worker's consume hook: each queue consumer stamps its queue's name on what it delivers.

Why the queue label needs it, and how the label is then read, is
:mod:`otel_celery_metrics.core.routing`'s (the rule both ways in share); this module is
the worker's one hook into kombu for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from otel_celery_metrics.core.routing import DELIVERED_FROM
from otel_celery_metrics.worker.patching import Wrapping

__all__ = ["ConsumeHook"]

_logger = logging.getLogger(__name__)


class ConsumeHook:
    """Makes every queue consumer stamp its queue's name on the messages it delivers.

    One adapter for one foreign internal (the callback kombu registers per consumed
    queue): :meth:`install` wraps :meth:`kombu.Queue.consume`, checks it took effect,
    and :meth:`uninstall` restores it.
    """

    def __init__(self) -> None:
        self._wrapping = Wrapping("kombu.Queue.consume")

    @property
    def installed(self) -> bool:
        return self._wrapping.installed

    def install(self) -> bool:
        """Wrap ``kombu.Queue.consume``; False (and an ERROR log) if it cannot be done."""
        from kombu.entity import Queue

        wrapping = self._wrapping

        def make(original: Callable[..., Any]) -> Callable[..., Any]:
            def consume(queue: Any, consumer_tag: str = "", callback: Any = None,
                        *args: Any, **kwargs: Any) -> Any:
                if callback is not None and wrapping.active:
                    callback = _stamping(callback, str(queue.name))
                return original(queue, consumer_tag, callback, *args, **kwargs)

            return consume

        if not wrapping.install(Queue, "consume", make):  # pragma: no cover - frozen class
            _logger.error(
                "cannot hook kombu.Queue.consume: the queue label falls back to the "
                "routing key when it names a consumed queue, else the default queue"
            )
            return False
        return True

    def uninstall(self) -> None:
        self._wrapping.restore()


def _stamping(callback: Callable[[Any], Any], queue: str) -> Callable[[Any], Any]:
    def stamp_queue(message: Any) -> Any:
        try:
            info = message.delivery_info
            if info.__class__ is dict:
                # A copy: a virtual transport's delivery_info is part of the raw payload
                # it writes back to the broker when it restores an unacked message.
                message.delivery_info = {**info, DELIVERED_FROM: queue}
        except Exception:  # noqa: BLE001, S110 - a message we cannot stamp is still delivered
            pass
        return callback(message)

    stamp_queue.__wrapped__ = callback  # type: ignore[attr-defined]
    return stamp_queue

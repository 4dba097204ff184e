"""Wrap one attribute of a Celery or kombu class or module, and put it back safely.

Our three hooks into Celery and kombu (the request class strategy builds, the queue
consumer's callback, beat's ``apply_async``) each replace one attribute with a wrapper of
it. :class:`Wrapping` is the one way they do it: the wrapper carries ``__wrapped__``, the
change is checked to have taken effect, and :meth:`Wrapping.restore` puts the original
back only if the attribute still holds *our* wrapper. Another library that wrapped the
same attribute after us keeps its wrapper (restoring over it would silently drop its
hook); that is logged instead, and ours, still called from inside theirs, passes every
call straight through from then on (wrappers check :attr:`Wrapping.active`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

__all__ = ["Wrapping"]

_logger = logging.getLogger(__name__)


class Wrapping:
    """One attribute (``owner.name``) replaced by a wrapper; ``what`` names it in logs."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._owner: Any = None
        self._name = ""
        self._original: Any = None
        self._wrapper: Any = None
        #: False once restored: a wrapper still called (from inside another library's
        #: later wrapper) must do nothing but call the original.
        self.active = False

    @property
    def installed(self) -> bool:
        return self._wrapper is not None

    @property
    def original(self) -> Any:
        return self._original

    def install(self, owner: Any, name: str, make: Callable[[Any], Any]) -> bool:
        """Set ``owner.name`` to ``make(original)``; False (nothing changed) when the
        attribute does not take the new value (a frozen or proxied class)."""
        if self._wrapper is not None:
            return True
        original = getattr(owner, name)
        wrapper = make(original)
        wrapper.__wrapped__ = original
        setattr(owner, name, wrapper)
        if getattr(owner, name) is not wrapper:
            return False
        self._owner, self._name, self._original, self._wrapper = owner, name, original, wrapper
        self.active = True
        return True

    def restore(self) -> bool:
        """Put the original back if ``owner.name`` is still our wrapper (True); else leave
        the later wrapper in place, log it, and forget ours (False)."""
        if self._wrapper is None:
            return True
        self.active = False
        current = getattr(self._owner, self._name, None)
        ours = current is self._wrapper
        if ours:
            setattr(self._owner, self._name, self._original)
        else:
            _logger.warning(
                "otel-celery-metrics: %s was wrapped again after our hook; leaving that "
                "wrapper in place (ours, inside it, now passes every call through)", self._what,
            )
        self._owner = self._original = self._wrapper = None
        return ours

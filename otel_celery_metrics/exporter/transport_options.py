"""kombu transport options from the command line, typed as kombu expects, and the checks
that make a broker set-up that can never connect fail at start instead of retrying.

``--broker-transport-option key=value`` (repeatable) and its environment form
(``key=value`` entries separated by commas) end up in Celery's
``broker_transport_options``. kombu reads them with their Python types (a string
``"1"`` is not a valid ``min_other_sentinels``), so each value is parsed here: the
options kombu's Redis, Sentinel and py-amqp transports document have a declared type
and a wrong value is an error naming the option; any other key takes a JSON value
(``5``, ``true``, ``{"password": "x"}``) or, if it is not JSON, the text as given.

A setting kombu would refuse at every connection attempt (no ``master_name`` on a
``sentinel://`` URL, a scheme no kombu transport has, a transport whose library is not
installed) is reported by
:func:`check_broker` once, before anything starts: the CLI exits 2 with that line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any


class TransportOptionError(ValueError):
    """A transport option (or a broker URL needing one) kombu would refuse."""


def _text(raw: str) -> str:
    return raw


def _integer(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise TransportOptionError(f"expected a whole number: {raw!r}") from None


def _number(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise TransportOptionError(f"expected a number: {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise TransportOptionError(f"expected a finite number >= 0: {raw!r}")
    return value


def _boolean(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise TransportOptionError(f"expected true or false: {raw!r}")


def _json(kind: type) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        try:
            value = json.loads(raw)
        except ValueError:
            raise TransportOptionError(f"expected a JSON {kind.__name__}: {raw!r}") from None
        if not isinstance(value, kind):
            raise TransportOptionError(f"expected a JSON {kind.__name__}: {raw!r}")
        return value

    return parse


#: The options of kombu's redis/sentinel and py-amqp transports, with kombu's types.
KNOWN: dict[str, Callable[[str], Any]] = {
    # Redis Sentinel
    "master_name": _text,
    "min_other_sentinels": _integer,
    "sentinel_kwargs": _json(dict),
    # Redis
    "global_keyprefix": _text,
    "socket_timeout": _number,
    "socket_connect_timeout": _number,
    "socket_keepalive": _boolean,
    "socket_keepalive_options": _json(dict),
    "health_check_interval": _integer,
    "retry_on_timeout": _boolean,
    "max_connections": _integer,
    "visibility_timeout": _number,
    "polling_interval": _number,
    "brpop_timeout": _number,
    "priority_steps": _json(list),
    "sep": _text,
    "queue_order_strategy": _text,
    "fanout_prefix": _boolean,
    "fanout_patterns": _boolean,
    "client_name": _text,
    "username": _text,
    # py-amqp
    "connect_timeout": _number,
    "read_timeout": _number,
    "write_timeout": _number,
    "confirm_publish": _boolean,
    "login_method": _text,
    "channel_max": _integer,
    "frame_max": _integer,
    # kombu's retry policy around connects
    "max_retries": _integer,
    "interval_start": _number,
    "interval_step": _number,
    "interval_max": _number,
}


def parse_option(entry: str) -> tuple[str, Any]:
    """``key=value`` -> (key, typed value); raises :class:`TransportOptionError`."""
    key, sep, raw = entry.partition("=")
    key = key.strip()
    if not sep or not key:
        raise TransportOptionError(f"expected key=value: {entry!r}")
    parse = KNOWN.get(key)
    if parse is not None:
        try:
            return key, parse(raw)
        except TransportOptionError as exc:
            raise TransportOptionError(f"{key}: {exc}") from None
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def split_entries(raw: str) -> list[str]:
    """The environment form: ``key=value`` entries separated by commas, where a JSON
    object or list value (``sentinel_kwargs={"a": 1, "b": 2}``) keeps its own commas."""
    entries: list[str] = []
    decoder = json.JSONDecoder()
    pos = 0
    while pos < len(raw):
        end = raw.find("=", pos)
        if end < 0:
            entries.append(raw[pos:].strip())
            break
        start_value = end + 1
        while start_value < len(raw) and raw[start_value] == " ":
            start_value += 1
        if start_value < len(raw) and raw[start_value] in "{[":
            try:
                _, stop = decoder.raw_decode(raw, start_value)
            except ValueError:
                stop = len(raw)
        else:
            comma = raw.find(",", start_value)
            stop = len(raw) if comma < 0 else comma
        entries.append(raw[pos:stop].strip())
        comma = raw.find(",", stop)
        pos = len(raw) if comma < 0 else comma + 1
    return [e for e in entries if e]


def scheme_of(broker_url: str) -> str:
    """The first URL's scheme (a failover list has one transport), lowercased."""
    return broker_url.split(";", 1)[0].split(":", 1)[0].strip().lower()


def check_broker(broker_url: str, options: Mapping[str, Any]) -> None:
    """Raise :class:`TransportOptionError` for a set-up kombu would refuse every time."""
    scheme = scheme_of(broker_url)
    from kombu.transport import resolve_transport

    try:
        resolve_transport(scheme)
    except ImportError as exc:
        msg = (f"kombu's transport for the scheme {scheme!r} of --broker-url needs a library "
               f"that is not installed ({exc})")
        raise TransportOptionError(msg) from None
    except (KeyError, AttributeError, ValueError) as exc:
        msg = f"no kombu transport for the scheme {scheme!r} of --broker-url ({exc})"
        raise TransportOptionError(msg) from None
    if scheme == "sentinel" and not options.get("master_name"):
        msg = ("a sentinel:// --broker-url needs the name of the primary the sentinels "
               "monitor: --broker-transport-option master_name=<name> (as the workers' "
               "broker_transport_options)")
        raise TransportOptionError(msg)

"""``otel-celery-exporter``: the command line. Every flag also reads an environment variable.

The only place that reads the environment, configures logging and installs signal
handlers; it builds an :class:`~.config.ExporterConfig` and runs the
:class:`~.service.Exporter` until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import codecs
import importlib.util
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from types import FrameType
from typing import Any, NoReturn

from otel_celery_metrics.core.parsing import parse_bool, parse_buckets, parse_seconds
from otel_celery_metrics.exporter.broker_tls import VERIFY_MODES, BrokerTLSError, broker_use_ssl
from otel_celery_metrics.exporter.config import ExporterConfig
from otel_celery_metrics.exporter.transport_options import (
    TransportOptionError,
    check_broker,
    parse_option,
    split_entries,
)
from otel_celery_metrics.version import __version__

ENV_PREFIX = "OTEL_CELERY_EXPORTER_"
_DEFAULTS = ExporterConfig()


def _buckets(raw: str) -> tuple[float, ...]:
    try:
        return parse_buckets(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}: {raw!r}") from None


def _names(raw: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in raw.split(",") if p.strip())


def _steps(raw: str) -> tuple[int, ...]:
    try:
        steps = tuple(int(p) for p in raw.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers: {raw!r}") from None
    if not steps or list(steps) != sorted(set(steps)):
        raise argparse.ArgumentTypeError(f"expected increasing priority steps: {raw!r}")
    return steps


def _seconds(raw: str) -> float:
    try:
        return parse_seconds(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}: {raw!r}") from None


def _count(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number: {raw!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1: {raw!r}")
    return value


def _port(raw: str) -> int:
    value = _count(raw) if raw != "0" else 0
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0-65535: {raw!r}")
    return value


def _bool(raw: str) -> bool:
    try:
        return parse_bool(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}: {raw!r}") from None


def _separator(raw: str) -> str:
    # Given as text with escapes (kombu's default is "\x06\x16").
    return codecs.decode(raw, "unicode_escape")


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in choices:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(choices)}: {raw!r}")
        return raw

    return parse


def _log_level(raw: str) -> str:
    """A level name in any case (``info``, ``INFO``, ``Info``), as Celery's ``-l`` takes it."""
    return _choice("DEBUG", "INFO", "WARNING", "ERROR")(raw.strip().upper())


def _exporters(raw: str) -> tuple[str, ...]:
    from otel_celery_metrics.exporter.outputs import METRICS_EXPORTERS

    names = _names(raw)
    unknown = [n for n in names if n not in METRICS_EXPORTERS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"expected prometheus, otlp or prometheus,otlp: {raw!r}")
    return tuple(dict.fromkeys(names))


#: Labels the exporter's own series carry, and those Prometheus reserves: a static label
#: of the same name would overwrite ours or be dropped on ingestion.
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _reserved_labels() -> set[str]:
    from otel_celery_metrics.core import metric_table as mt
    from otel_celery_metrics.exporter import compat

    names = {a for spec in mt.EXPORTER_METRICS for a in spec.attributes}
    names |= set(compat.FAILED_LABELS) | {compat.QUEUE_LABEL, mt.HOSTNAME}
    return names | {"job", "instance", "le", "quantile", "otel_scope_name"}


def _labels(raw: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        key, sep, val = part.partition("=")
        key, val = key.strip(), val.strip()
        if not sep or not val:
            raise argparse.ArgumentTypeError(f"expected name=value: {part!r}")
        if not _LABEL_NAME.fullmatch(key) or key.startswith("__"):
            raise argparse.ArgumentTypeError(
                f"not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, no leading __): {key!r}")
        if key in _reserved_labels():
            raise argparse.ArgumentTypeError(f"{key!r} is a label the exporter sets itself")
        pairs.append((key, val))
    return tuple(pairs)


def _interval_ms(raw: str) -> str:
    # OTEL_METRIC_EXPORT_INTERVAL is in milliseconds; our flag in seconds.
    try:
        return f"{float(raw) / 1000:g}"
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds: {raw!r}") from None


def _show(value: Any) -> str:
    if value and isinstance(value, tuple) and isinstance(value[0], tuple):
        return ",".join(f"{k}={v}" for k, v in value)
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) or "(none)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value.encode("unicode_escape").decode() if value else "(none)"
    if isinstance(value, dict):
        return json.dumps(value) if value else "(none)"
    return str(value)


# field -> (parser, help). Flags are the field names with dashes; booleans are switches.
OPTIONS: dict[str, tuple[Callable[[str], Any], str]] = {
    "broker_url": (str, "Broker the workers use (redis://, amqp://, ...). Logged masked."),
    "broker_tls_ca_file": (str, "TLS to the broker (amqps://, rediss://): CA certificates "
                                "(PEM) the broker's certificate must chain to; none: the "
                                "system's CAs."),
    "broker_tls_cert_file": (str, "TLS to the broker: client certificate (PEM), for a broker "
                                  "that asks for one."),
    "broker_tls_key_file": (str, "TLS to the broker: the client certificate's key (PEM, "
                                 "unencrypted), unless the certificate file holds it."),
    "broker_tls_verify": (_choice(*VERIFY_MODES),
                          "TLS to the broker: full (certificate chain and host name), ca "
                          "(chain only) or none (unverified, logged as a warning)."),
    "host": (str, "Address /metrics and /health listen on."),
    "port": (_port, "Port /metrics and /health listen on (0 picks a free one)."),
    "keda_scaler_port": (_port, "Port of the KEDA external scaler gRPC API (on --host), "
                                "answering from this exporter's view of each queue; 0: off "
                                "(needs otel-celery-metrics[keda-scaler])."),
    "buckets": (_buckets, "Runtime histogram boundaries in seconds, comma-separated."),
    "queue_wait_buckets": (_buckets, "Queue-wait histogram boundaries in seconds."),
    "queues": (_names, "Queues to probe for depth, besides those workers report."),
    "receiver": (_choice("auto", "redis", "amqp", "kombu"),
                 "How to read events: redis (raw pub/sub, plain redis:// only), amqp "
                 "(RabbitMQ, own bounded queue), kombu (any transport), auto (redis for "
                 "redis://, amqp for amqp://, amqps://, pyamqp://, kombu for the rest)."),
    "worker_timeout": (_seconds, "Seconds without a heartbeat before celery_worker_up is 0."),
    "worker_forget_after": (_seconds,
                            "Seconds without a heartbeat before a worker's series are removed."),
    "queue_poll_interval": (_seconds, "Seconds between queue depth probes."),
    "inspect_interval": (_seconds, "Seconds between inspect probes (queues and pools)."),
    "probe_timeout": (_seconds, "Bound on each broker round trip of a probe or connect: a "
                                "new connection is up only once the broker answered in it."),
    "broker_heartbeat": (_seconds, "Seconds a broker connection may stay silent before it is "
                                   "reported down (a hung broker, a half-open connection): "
                                   "Redis gets a PING after a third of it, RabbitMQ is asked "
                                   "for heartbeats every half of it."),
    "enable_events": (_bool, "Periodically ask all workers to send task events."),
    "enable_events_interval": (_seconds, "Seconds between enable_events broadcasts."),
    "events_missing_after": (_seconds,
                             "Seconds a worker may process tasks without task events before "
                             "it is reported as having events disabled."),
    "max_task_names": (_count, "Distinct task names before new ones become __overflow__."),
    "max_queues": (_count, "Distinct queues before new ones become __overflow__."),
    "max_workers": (_count, "Distinct workers tracked before new ones are counted as overflow."),
    "task_allow": (_names, "Only these task names (comma-separated fnmatch patterns)."),
    "task_deny": (_names, "Never these task names (patterns; deny wins)."),
    "queue_allow": (_names, "Only these queues (patterns)."),
    "queue_deny": (_names, "Never these queues (patterns; deny wins)."),
    "task_hostname_label": (_bool, "Add the worker hostname label to the per-event task "
                                   "counters (multiplies series)."),
    "danihodovic_names": (_bool, "Publish danihodovic/celery-exporter's metric and label "
                                 "names for the task counters, runtime and queue gauges."),
    "default_queue": (str, "Queue label when the events do not tell (no task-sent event)."),
    "priority_steps": (_steps, "Redis priority steps the app configures (priority_steps)."),
    "priority_separator": (_separator, "Redis priority separator (sep), with escapes."),
    "redis_key_prefix": (str, "kombu's global_keyprefix transport option, if the app sets it."),
    "max_tracked_tasks": (_count, "Task ids remembered between their events."),
    "max_backlog_bytes": (_count, "Raw event bytes buffered before reading pauses."),
    "event_queue_ttl": (_seconds, "RabbitMQ: seconds an event may wait in the exporter's "
                                  "queue (x-message-ttl)."),
    "event_queue_expires": (_seconds, "RabbitMQ: seconds the exporter's queue outlives its "
                                      "connection (x-expires)."),
    "event_queue_max_length": (_count, "RabbitMQ: messages the exporter's queue holds before "
                                       "the oldest are dropped and counted (x-max-length)."),
    "event_queue_max_bytes": (_count, "RabbitMQ: body bytes the exporter's queue holds before "
                                      "the oldest are dropped (x-max-length-bytes)."),
    "stuck_after": (_seconds, "Seconds a receive loop may stand still before /health fails."),
    "reconnect_initial": (_seconds, "First reconnect delay; doubles per failure."),
    "reconnect_max": (_seconds, "Longest reconnect delay."),
    "max_queue_wait": (_seconds, "Seconds: a longer queue wait (a wrong clock, a bad "
                                 "timestamp) is not recorded but counted in "
                                 "celery_exporter_measurements_dropped_total."),
    "max_runtime": (_seconds, "Seconds: a longer runtime is not recorded but counted."),
    "clock_skew_tolerance": (_seconds, "Seconds a publish time or ETA may lie after the task's "
                                       "start (clocks disagree) and count as a wait of 0; "
                                       "further ahead, the wait is not recorded but counted."),
    "log_level": (_log_level, "Log level: DEBUG, INFO, WARNING or ERROR, in any case."),
    "web_config_file": (str, "Prometheus exporter-toolkit web config file (TLS, basic auth) "
                             "for /metrics and /health; re-read on change and on SIGHUP."),
    "metrics_exporters": (_exporters,
                          "Where metrics go: prometheus (/metrics), otlp (pushed to "
                          "OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT with its _HEADERS etc.) or "
                          "prometheus,otlp. /health is served either way."),
    "otlp_protocol": (_choice("http/protobuf", "grpc"), "OTLP: http/protobuf or grpc."),
    "otlp_temporality": (_choice("cumulative", "delta", "lowmemory"),
                         "OTLP: cumulative (what the Collector's prometheus exporter and "
                         "Prometheus store), delta or lowmemory."),
    "otlp_export_interval": (_seconds, "OTLP: seconds between exports."),
    "static_labels": (_labels, "Label name=value added to every series of both outputs; "
                               "repeat the flag, or comma-separate them in the variable."),
}
#: Standard OpenTelemetry variables read when ours is unset: variable -> (field, to text).
STANDARD_ENV: dict[str, tuple[str, Callable[[str], str]]] = {
    "OTEL_METRICS_EXPORTER": ("metrics_exporters", str),
    "OTEL_EXPORTER_OTLP_PROTOCOL": ("otlp_protocol", str),
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": ("otlp_protocol", str),
    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": ("otlp_temporality", str.lower),
    "OTEL_METRIC_EXPORT_INTERVAL": ("otlp_export_interval", _interval_ms),
}
#: Fields whose flag may be repeated; the flags replace the variable's value.
REPEATABLE = {"static_labels": "--static-label"}
#: Flags spelled as Prometheus' exporters spell them, besides the dashed form.
FLAG_ALIASES = {"web_config_file": ("--web.config.file",)}
#: The one repeatable flag (its own argument below, not in OPTIONS): kombu transport options.
TRANSPORT_OPTIONS = "broker_transport_options"
TRANSPORT_OPTION_FLAG = "--broker-transport-option"


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


class _Parser(argparse.ArgumentParser):
    """Errors in one line: the usage of fifty flags would bury the one that is wrong."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="otel-celery-exporter",
        description="Read the Celery event bus and serve Prometheus metrics, push them over "
        "OTLP, or both: task counts, runtimes, queue wait, broker backlog and worker "
        "liveness, with no application change. Workers must send task events (celery "
        "worker -E, or --enable-events). "
        "Every flag also reads the environment variable shown; a flag wins over it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version",
                        version=f"otel-celery-exporter {__version__}")
    standard = {field: var for var, (field, _) in STANDARD_ENV.items()}
    for name, (parse, text) in OPTIONS.items():
        variable = env_name(name)
        default = getattr(_DEFAULTS, name)
        source, raw, to_text = _from_environment(name, environ)
        if raw not in (None, ""):
            try:
                default = parse(to_text(raw))
            except (argparse.ArgumentTypeError, ValueError) as exc:
                parser.error(f"{source}: {exc}")
        also = f" or {standard[name]}" if name in standard else ""
        help_text = (f"{text} [env {variable}{also}; "
                     f"default {_show(getattr(_DEFAULTS, name))}]")
        flag = "--" + name.replace("_", "-")
        if name in REPEATABLE:
            parser.add_argument(REPEATABLE[name], flag, dest=name, type=parse, action="extend",
                                default=None, metavar="NAME=VALUE", help=help_text)
            parser.set_defaults(**{f"{name}_from_environment": default})
        elif isinstance(getattr(_DEFAULTS, name), bool):
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=default, help=help_text)
        else:
            parser.add_argument(*FLAG_ALIASES.get(name, ()), flag, dest=name, type=parse,
                                default=default, metavar=name.upper(), help=help_text)
    variable = env_name(TRANSPORT_OPTIONS)
    parser.add_argument(
        TRANSPORT_OPTION_FLAG, dest=TRANSPORT_OPTIONS, action="append",
        default=split_entries(environ.get(variable, "")), metavar="KEY=VALUE",
        help="A kombu transport option for every broker connection, typed as kombu expects "
        "(numbers, true/false, JSON objects); repeatable; master_name=<name> is required "
        "with sentinel:// URLs. A flag given replaces the variable's list. [env "
        f"{variable}: KEY=VALUE entries separated by commas]",
    )
    parser.formatter_class = argparse.HelpFormatter  # defaults are in each help text
    return parser


def _from_environment(
    name: str, environ: Mapping[str, str]
) -> tuple[str, str | None, Callable[[str], str]]:
    """(variable, raw value, its conversion to flag text) for field ``name``: ours first,
    then the standard variable (OTEL_EXPORTER_OTLP_METRICS_* before the general one)."""
    variable = env_name(name)
    if environ.get(variable):
        return variable, environ[variable], str
    for standard, (field, to_text) in reversed(STANDARD_ENV.items()):
        if field == name and environ.get(standard):
            return standard, environ[standard], to_text
    return variable, None, str


def _transport_options(
    parser: argparse.ArgumentParser, entries: list[str], from_flags: bool
) -> dict[str, Any]:
    source = TRANSPORT_OPTION_FLAG if from_flags else env_name(TRANSPORT_OPTIONS)
    options: dict[str, Any] = {}
    for entry in entries:
        try:
            key, value = parse_option(entry)
        except TransportOptionError as exc:
            parser.error(f"{source}: {exc}")
        options[key] = value
    return options


def config_from_args(argv: Sequence[str], environ: Mapping[str, str]) -> ExporterConfig:
    parser = build_parser(environ)
    args = parser.parse_args(list(argv))
    values = vars(args)
    for name in REPEATABLE:
        if values[name] is None:
            values[name] = values[f"{name}_from_environment"]
        values[name] = tuple(values[name])
    keys = [k for k, _ in values["static_labels"]]
    if len(keys) != len(set(keys)):
        parser.error(f"--static-label: a label is given twice: {', '.join(keys)}")
    known = {f.name for f in fields(ExporterConfig)}
    values = {k: v for k, v in values.items() if k in known}
    entries = values[TRANSPORT_OPTIONS]
    default = split_entries(environ.get(env_name(TRANSPORT_OPTIONS), ""))
    # argparse appends flags to the default list: a flag given replaces the variable's list.
    from_flags = len(entries) > len(default)
    if from_flags:
        entries = entries[len(default):]
    options = _transport_options(parser, entries, from_flags)
    values[TRANSPORT_OPTIONS] = options
    prefix = options.get("global_keyprefix")
    if isinstance(prefix, str) and prefix != values["redis_key_prefix"]:
        if values["redis_key_prefix"]:
            parser.error(f"--redis-key-prefix {values['redis_key_prefix']!r} and the transport "
                         f"option global_keyprefix={prefix!r} disagree; give one of them")
        values["redis_key_prefix"] = prefix
    config = ExporterConfig(**values)
    try:
        broker_use_ssl(config)  # files checked now, not at the first connection
    except BrokerTLSError as exc:
        parser.error(exc.describe(_flag_and_variable))
    if "otlp" in config.metrics_exporters:
        from otel_celery_metrics.exporter.outputs import OutputUnavailable, otlp_exporter_class

        try:
            otlp_exporter_class(config.otlp_protocol)
        except OutputUnavailable as exc:
            parser.error(f"--metrics-exporters=otlp: {exc}")
    try:
        check_broker(config.broker_url, config.broker_transport_options)
    except TransportOptionError as exc:
        parser.error(str(exc))
    if config.keda_scaler_port and not all(map(_importable, ("grpc", "google.protobuf"))):
        from otel_celery_metrics.exporter.keda_scaler import INSTALL_HINT

        parser.error(f"{_flag_and_variable('keda_scaler_port')}={config.keda_scaler_port} "
                     f"needs grpcio and protobuf: {INSTALL_HINT}")
    return config


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # its parent package is missing
        return False


def _flag_and_variable(name: str) -> str:
    return f"--{name.replace('_', '-')} ({env_name(name)})"


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    config = config_from_args(sys.argv[1:] if argv is None else argv,
                              os.environ if environ is None else environ)
    logging.basicConfig(
        level=config.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from otel_celery_metrics.core.web_config import WebConfigError
    from otel_celery_metrics.exporter.service import Exporter

    exporter = Exporter(config)
    if not exporter.capabilities.events and not config.queues:
        # Probe-only mode has no discovery (no inspect): without --queues it reports nothing.
        logging.getLogger(__name__).error(
            "broker %s: %s; %s names no queue, so there is nothing to report: give the "
            "Celery queue names to probe; not starting", config.masked_broker_url,
            exporter.capabilities.describe(), _flag_and_variable("queues"))
        return 2
    try:
        exporter.start()
    except WebConfigError as exc:
        # Never serve without the TLS or auth the operator asked for.
        logging.getLogger(__name__).error("%s; not starting", exc)
        return 2
    except OSError as exc:
        logging.getLogger(__name__).error(
            "cannot listen on %s:%s: %s", config.host, config.port, exc.strerror or exc)
        return 1

    def _stop(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("signal %d: stopping", signum)
        exporter.request_stop()

    def _reload(_signum: int, _frame: FrameType | None) -> None:
        exporter.reload_web_config()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, _reload)
    exporter.wait()
    exporter.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

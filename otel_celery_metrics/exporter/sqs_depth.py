"""Queue depth on Amazon SQS (and SQS-compatible servers): three counts per queue.

SQS keeps, per queue, ``ApproximateNumberOfMessages`` (waiting: what an autoscaler
scales on), ``ApproximateNumberOfMessagesNotVisible`` (in flight: received by a worker,
not yet deleted; with Celery that includes ETA and countdown tasks a worker holds) and
``ApproximateNumberOfMessagesDelayed`` (sent with a delay, not yet visible). The exporter
reports them as three series (``celery_queue_messages``, ``celery_queue_in_flight``,
``celery_queue_delayed``); they are approximate by SQS' own definition.

Queues are named as the workers name them: the label is the Celery queue name, the SQS
queue is kombu's name for it (:func:`sqs_queue_name`). A queue that does not exist on
SQS is left out, never created. Our own boto3 client, not kombu's, so that every call is
bounded by ``probe_timeout`` with no retries (a scrape never waits on it either way).
"""

from __future__ import annotations

import string
from typing import Any
from urllib.parse import unquote, urlsplit

from otel_celery_metrics.exporter.config import ExporterConfig

#: What kombu's SQS transport does to a Celery queue name to get a legal SQS name: dots
#: become dashes, every other punctuation character but ``-`` and ``_`` an underscore
#: (a ``.fifo`` suffix is kept). SQS allows only alphanumerics, ``-`` and ``_``.
_SQS_NAME_TABLE = {ord(c): "_" for c in string.punctuation if c not in "-_."}
_SQS_NAME_TABLE[ord(".")] = "-"
_FIFO = ".fifo"
ATTRIBUTES = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
)


def sqs_queue_name(queue: str, prefix: str = "") -> str:
    """The SQS queue kombu uses for the Celery queue ``queue`` (``queue_name_prefix``
    ``prefix``): ``sqs_queue_name("media.images", "prod-")`` is ``prod-media-images``."""
    name = prefix + queue
    if name.endswith(_FIFO):
        return name[: -len(_FIFO)].translate(_SQS_NAME_TABLE) + _FIFO
    return name.translate(_SQS_NAME_TABLE)


class SqsDepths:
    """(waiting, in flight, delayed) per Celery queue name, from ``GetQueueAttributes``."""

    def __init__(self, config: ExporterConfig) -> None:
        self._config = config
        options = config.broker_transport_options
        self._prefix = str(options.get("queue_name_prefix") or "")
        predefined = options.get("predefined_queues") or {}
        self._predefined: dict[str, Any] = predefined if isinstance(predefined, dict) else {}
        self._client: Any = None
        self._urls: dict[str, str] = {}

    def _new_client(self) -> Any:
        import boto3
        from botocore.config import Config

        cfg = self._config
        parts = urlsplit(cfg.broker_url)
        options = cfg.broker_transport_options
        endpoint = None
        if parts.hostname:  # as kombu: host (and port) of the URL, http unless is_secure
            scheme = "https" if options.get("is_secure") else "http"
            port = f":{parts.port}" if parts.port else ""
            endpoint = f"{scheme}://{parts.hostname}{port}"
        timeout = cfg.probe_timeout
        return boto3.session.Session().client(
            "sqs",
            region_name=options.get("region") or boto3.session.Session().region_name
            or "us-east-1",
            endpoint_url=endpoint,
            # None: boto3's own chain (environment, profile, instance role), as kombu.
            aws_access_key_id=unquote(parts.username) if parts.username else None,
            aws_secret_access_key=unquote(parts.password) if parts.password else None,
            config=Config(connect_timeout=timeout, read_timeout=timeout,
                          retries={"max_attempts": 1, "mode": "standard"}),
        )

    def _url(self, queue: str) -> str | None:
        """The queue's URL, or None when SQS has no such queue (it is not created)."""
        known = self._urls.get(queue)
        if known is not None:
            return known
        entry = self._predefined.get(queue)
        if isinstance(entry, dict) and entry.get("url"):
            url = str(entry["url"])
        else:
            try:
                reply = self._client.get_queue_url(QueueName=sqs_queue_name(queue, self._prefix))
            except self._client.exceptions.QueueDoesNotExist:
                return None
            url = str(reply["QueueUrl"])
        self._urls[queue] = url
        return url

    def depths(self, names: list[str]) -> dict[str, tuple[int, int, int]]:
        if self._client is None:
            self._client = self._new_client()
        out: dict[str, tuple[int, int, int]] = {}
        for name in names:
            url = self._url(name)
            if url is None:
                continue
            try:
                reply = self._client.get_queue_attributes(
                    QueueUrl=url, AttributeNames=list(ATTRIBUTES))
            except self._client.exceptions.QueueDoesNotExist:
                self._urls.pop(name, None)  # deleted since: looked up again next time
                continue
            attrs = reply.get("Attributes") or {}
            waiting, in_flight, delayed = (_count(attrs.get(a)) for a in ATTRIBUTES)
            out[name] = (waiting, in_flight, delayed)
        return out

    def reset(self) -> None:
        """After a failure: a new client (and fresh URL look-ups) next time."""
        self._client = None
        self._urls.clear()


def _count(raw: Any) -> int:
    """An attribute SQS sends as a decimal string; anything else counts as 0."""
    try:
        value = int(str(raw))
    except ValueError:
        return 0
    return max(0, value)

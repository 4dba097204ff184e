"""TLS to the broker: the exporter's settings -> Celery's ``broker_use_ssl``, checked up front.

kombu opens every broker connection the exporter makes (the event receivers, the queue
probe, the inspect and enable_events broadcasts) from the Celery app's
``broker_use_ssl``. :func:`broker_use_ssl` builds it from :class:`~.config.ExporterConfig`
in the spelling of the transport the URL names: py-amqp (``amqps://``) and redis-py
(``rediss://``) call the same options differently.

The files are checked before anything connects: a missing or unreadable file, a CA file
that holds no certificate, a client certificate with no key (in its file or a key file),
a key that does not match its certificate, or an encrypted key
(OpenSSL would prompt for its pass phrase on the terminal, from a background thread,
at every connection) raise :class:`BrokerTLSError`, which names the setting and the file,
never a file's contents.

Verification is on unless turned off by name: ``full`` checks the broker's certificate
chain against the CA file (the system's CAs without one) and its host name against the
URL's, ``ca`` the chain only, ``none`` nothing (the start-up log says so).
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable
from typing import Any

from otel_celery_metrics.core.web_config import EncryptedKey, no_passphrase
from otel_celery_metrics.exporter.config import ExporterConfig

#: URL scheme -> the transport whose option names ``broker_use_ssl`` must use.
TLS_SCHEMES = {"amqps": "amqp", "rediss": "redis"}
VERIFY_MODES = ("full", "ca", "none")
_FILES = ("broker_tls_ca_file", "broker_tls_cert_file", "broker_tls_key_file")
#: A PEM private key of any kind (PKCS#8, EC, RSA, encrypted).
_PEM_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")


class BrokerTLSError(ValueError):
    """A broker TLS setting that cannot work; ``settings`` are the (field, value) pairs
    it is about, so the CLI can name them as flags and environment variables."""

    def __init__(self, problem: str, *settings: tuple[str, str]) -> None:
        self.problem = problem
        self.settings = settings
        super().__init__(self.describe(lambda name: name))

    def describe(self, name: Callable[[str], str]) -> str:
        named = " and ".join(f"{name(setting)} {value}" for setting, value in self.settings)
        return f"{named}: {self.problem}"


def uses_tls(config: ExporterConfig) -> bool:
    return _transport(config) is not None


def _transport(config: ExporterConfig) -> str | None:
    return TLS_SCHEMES.get(config.broker_url.split(":", 1)[0].strip().lower())


def broker_use_ssl(config: ExporterConfig) -> dict[str, Any] | None:
    """``broker_use_ssl`` for the Celery app, None for a plain-text URL; raises
    :class:`BrokerTLSError` for settings that cannot work."""
    transport = _transport(config)
    given = [(name, getattr(config, name)) for name in _FILES if getattr(config, name)]
    if config.broker_tls_verify not in VERIFY_MODES:
        raise BrokerTLSError(f"expected one of {', '.join(VERIFY_MODES)}",
                             ("broker_tls_verify", config.broker_tls_verify))
    if transport is None:
        if given or config.broker_tls_verify != "full":
            # Celery turns TLS on for any URL with broker_use_ssl; here a TLS setting on
            # another URL is a mistake to report, not a switch (our Redis reader would not
            # follow it). sentinel:// too: kombu's Sentinel transport takes broker_use_ssl,
            # but no test of ours proves the exporter's connections over it.
            setting = given[0] if given else ("broker_tls_verify", config.broker_tls_verify)
            raise BrokerTLSError(
                "TLS settings apply to amqps:// and rediss:// URLs only, not "
                f"{config.masked_broker_url}", setting)
        return None
    if transport == "redis" and config.receiver == "redis":
        # The raw pub/sub reader opens a plain socket: it would send AUTH in clear text
        # to a server that expects TLS. kombu's receiver (auto's choice) does TLS.
        raise BrokerTLSError("the raw Redis reader has no TLS; use --receiver=auto or "
                             "--receiver=kombu with rediss://", ("receiver", "redis"))
    ca, cert, key = (getattr(config, name) for name in _FILES)
    _check(ca, cert, key)
    verify = config.broker_tls_verify
    if transport == "redis":
        options: dict[str, Any] = {
            "ssl_cert_reqs": ssl.CERT_NONE if verify == "none" else ssl.CERT_REQUIRED,
            "ssl_check_hostname": verify == "full",
        }
        names = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
    else:
        options = {"cert_reqs": ssl.CERT_NONE if verify == "none" else ssl.CERT_REQUIRED}
        if verify == "full":
            # kombu fills in the URL's host; py-amqp then checks the certificate names it.
            options["server_hostname"] = None
        names = ("ca_certs", "certfile", "keyfile")
    options.update({name: value for name, value in zip(names, (ca, cert, key), strict=True)
                    if value})
    return options


def describe(config: ExporterConfig) -> str:
    """For the start-up line: what TLS to the broker checks (file names, no contents)."""
    if not uses_tls(config):
        return "plain text"
    verify = {"full": "certificate and host name verified", "ca": "certificate verified",
              "none": "NOT VERIFIED"}[config.broker_tls_verify]
    against = config.broker_tls_ca_file or "the system's CAs"
    text = f"TLS, {verify}" + (f" against {against}" if config.broker_tls_verify != "none"
                               else "")
    if config.broker_tls_cert_file:
        text += f", client certificate {config.broker_tls_cert_file}"
    return text


def _check(ca: str, cert: str, key: str) -> None:
    for setting, path in (("broker_tls_ca_file", ca), ("broker_tls_cert_file", cert),
                          ("broker_tls_key_file", key)):
        if path:
            _readable(setting, path)
    if key and not cert:
        raise BrokerTLSError("a client key needs its certificate (broker_tls_cert_file)",
                             ("broker_tls_key_file", key))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca:
        try:
            context.load_verify_locations(cafile=ca)
        except ssl.SSLError as exc:
            raise BrokerTLSError(f"holds no PEM certificate ({exc.reason or exc})",
                                 ("broker_tls_ca_file", ca)) from None
    if cert:
        files = [("broker_tls_cert_file", cert)] + ([("broker_tls_key_file", key)] if key
                                                    else [])
        try:
            context.load_cert_chain(cert, key or None, password=no_passphrase)
        except EncryptedKey:
            raise BrokerTLSError("the key is encrypted; give an unencrypted key (readable "
                                 "by this process only)", *files) from None
        except ssl.SSLError as exc:
            # OpenSSL says only "PEM lib" for a missing certificate or key: look which.
            if exc.reason == "KEY_VALUES_MISMATCH":
                problem = "the certificate and the key do not match"
            elif not _holds_certificate(cert):
                problem, files = "holds no PEM certificate", files[:1]
            elif not _holds_private_key(key or cert):
                problem, files = ("holds no PEM private key" if key else
                                  "holds no private key; give --broker-tls-key-file",
                                  files[-1:])
            else:
                problem = f"not a PEM certificate and its key ({exc.reason or exc})"
            raise BrokerTLSError(problem, *files) from None


def _holds_certificate(path: str) -> bool:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError:
        return False
    return True


def _holds_private_key(path: str) -> bool:
    # Only a marker is looked for; the key itself is neither kept nor shown.
    with open(path, "rb") as file:
        return _PEM_KEY.search(file.read()) is not None


def _readable(setting: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        problem = "no such file"
    except IsADirectoryError:
        problem = "is a directory, not a file"
    except OSError as exc:
        problem = f"cannot be read ({exc.strerror or exc})"
    else:
        return
    raise BrokerTLSError(problem, (setting, path))


def tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind a connection failure (kombu wraps it), if it was one."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None

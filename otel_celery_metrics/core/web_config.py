"""The Prometheus exporter-toolkit web configuration file: reading and checking it.

Shared by both endpoints: the standalone exporter (``--web.config.file``) and the
in-process Prometheus endpoint (``OTEL_CELERY_METRICS_WEB_CONFIG_FILE``). Operators
already write this format for node_exporter and Prometheus itself, so we read the same
file rather than invent one:

.. code-block:: yaml

    tls_server_config: {cert_file: ..., key_file: ..., client_ca_file: ...,
                        client_auth_type: RequireAndVerifyClientCert, min_version: TLS12}
    http_server_config: {headers: {Strict-Transport-Security: max-age=31536000}}
    basic_auth_users: {prometheus: <bcrypt hash>}

:func:`load_web_config` parses and checks a file into a :class:`WebConfig` (an SSL context
built with the standard library's :mod:`ssl`, bcrypt hashes checked by shape, the check of
a request's credentials) or raises :class:`WebConfigError` naming the file and the
problem. It never echoes a hash or key material. Serving with it (reloads, the TLS
handshake per connection, the WSGI guard) is :mod:`otel_celery_metrics.core.web_serving`.

Nothing runs at import.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import ssl
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_logger = logging.getLogger(__name__)

_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users")
_TLS_KEYS = ("cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version",
             "max_version", "prefer_server_cipher_suites")
#: Keys of the exporter-toolkit format we do not implement: refused by name, never ignored
#: (silently dropping a security setting would serve something weaker than asked for).
_TLS_UNSUPPORTED = ("cipher_suites", "curve_preferences", "cert", "key", "client_ca",
                    "client_allowed_sans")
_HTTP_KEYS = ("headers", "http2")
_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3,
}
#: exporter-toolkit client_auth_type -> ssl verify mode. Request/RequireAny (a client
#: certificate asked for but not verified) cannot be expressed with Python's ssl.
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_CLIENT_AUTH_UNSUPPORTED = ("RequestClientCert", "RequireAnyClientCert")
#: The response headers the exporter-toolkit lets a web config set.
_HEADERS = ("Strict-Transport-Security", "X-Content-Type-Options", "X-Frame-Options",
            "X-XSS-Protection", "Content-Security-Policy")
#: How to make a hash for ``basic_auth_users``, in the error text and the docs: Python's
#: bcrypt, which the extras that read web configs install (``htpasswd`` is apache2-utils,
#: not installed by default on Debian). It prompts for the password without echoing it.
BCRYPT_COMMAND = ("python3 -c 'import bcrypt, getpass; "
                  "print(bcrypt.hashpw(getpass.getpass().encode(), bcrypt.gensalt()).decode())'")
_BCRYPT_HASH = re.compile(r"^\$2[abxy]?\$\d\d\$[./A-Za-z0-9]{53}$")
#: Checked for unknown users so that a wrong user name costs as long as a wrong password
#: (no user enumeration by timing). Its password is not a secret.
_DUMMY_HASH = b"$2b$10$210ngHTgT/MYEVa9l1UPBuAZf6Lq3aG.nVMV.x/R6fucL4t3lgs66"
#: A bcrypt check takes ~50-100 ms by design; remember recent successes (keyed by a
#: digest, never the password) so a 1 s scrape interval costs one check, not one per scrape.
_AUTH_CACHE_SIZE = 64


class WebConfigError(ValueError):
    """A web config file we will not serve with; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"web config {self.path}: {problem}")


@dataclass(frozen=True)
class WebConfig:
    """One parsed, checked web config. ``repr`` and :meth:`describe` show no secrets."""

    path: str
    tls: ssl.SSLContext | None = None
    #: user -> bcrypt hash
    users: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    headers: tuple[tuple[str, str], ...] = ()
    client_auth: str = "NoClientCert"
    min_version: str = "TLS12"
    _ok_cache: dict[bytes, bool] = field(default_factory=dict, repr=False, compare=False)
    _cache_lock: threading.Lock = field(
        default_factory=threading.Lock, repr=False, compare=False
    )

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    def describe(self) -> str:
        """What is enforced, for a log line (no user names, hashes or key material)."""
        parts = [f"TLS (min {self.min_version}, {self.client_auth})" if self.tls else "no TLS"]
        parts.append(f"basic auth for {len(self.users)} user(s)" if self.users else
                     "no basic auth")
        return ", ".join(parts)

    def authorized(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value passes ``basic_auth_users``."""
        if not self.users:
            return True
        user, password = _basic_credentials(authorization)
        if user is None or password is None:
            return False
        key = hashlib.sha256(f"{user}\0{password}".encode()).digest()
        with self._cache_lock:
            if self._ok_cache.get(key):
                return True
        import bcrypt

        hashed = self.users.get(user)
        try:
            ok = bcrypt.checkpw(password.encode(), hashed or _DUMMY_HASH) and hashed is not None
        except ValueError:
            ok = False
        if ok:
            with self._cache_lock:
                if len(self._ok_cache) >= _AUTH_CACHE_SIZE:
                    self._ok_cache.clear()
                self._ok_cache[key] = True
        return ok


def _basic_credentials(authorization: str | None) -> tuple[str | None, str | None]:
    import base64
    import binascii

    if not authorization:
        return None, None
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else (None, None)


# -- parsing -------------------------------------------------------------------------------


def load_web_config(path: str | os.PathLike[str]) -> WebConfig:
    """Parse and check the web config file at ``path``; raise :class:`WebConfigError`."""
    try:
        import yaml
    except ImportError:
        raise WebConfigError(path, "reading it needs PyYAML: pip install "
                             "'otel-celery-metrics[prometheus]'") from None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise WebConfigError(path, f"cannot read it: {reason}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise WebConfigError(path, f"not valid YAML{at}: "
                             f"{getattr(exc, 'problem', None) or 'syntax error'}") from None
    if data is None:
        return WebConfig(path=str(path))  # an empty file: no TLS, no auth (as the toolkit)
    section = _mapping(path, data, "the file")
    _known_keys(path, section, _TOP_KEYS, (), "")
    base = Path(path).resolve().parent
    tls, client_auth, min_version = _tls(path, base, section.get("tls_server_config"))
    return WebConfig(
        path=str(path), tls=tls, users=_users(path, section.get("basic_auth_users")),
        headers=_http(path, section.get("http_server_config")), client_auth=client_auth,
        min_version=min_version,
    )


def referenced_files(path: str | os.PathLike[str]) -> list[Path]:
    """The config file and the certificate/key/CA files it names (for change detection)."""
    files = [Path(path)]
    try:
        import yaml

        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        tls = data.get("tls_server_config") or {}
        base = Path(path).resolve().parent
        files += [base / tls[k] for k in ("cert_file", "key_file", "client_ca_file")
                  if isinstance(tls.get(k), str) and tls[k]]
    except Exception:  # noqa: BLE001, S110 - a bad file is reported by load_web_config
        pass
    return files


def _mapping(path: str | os.PathLike[str], value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WebConfigError(path, f"{where} must be a mapping, not {type(value).__name__}")
    return value


def _known_keys(
    path: str | os.PathLike[str], section: Mapping[str, Any], known: Iterable[str],
    unsupported: Iterable[str], prefix: str,
) -> None:
    for key in section:
        if key in unsupported:
            raise WebConfigError(path, f"{prefix}{key} is not supported by otel-celery-metrics;"
                                 " remove it")
        if key not in known:
            raise WebConfigError(path, f"unknown key {prefix}{key!s} (known: "
                                 f"{', '.join(prefix + k for k in known)})")


def _string(path: str | os.PathLike[str], section: Mapping[str, Any], key: str,
            where: str) -> str:
    value = section.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise WebConfigError(path, f"{where}.{key} must be a string")
    return value


def _tls(
    path: str | os.PathLike[str], base: Path, raw: Any
) -> tuple[ssl.SSLContext | None, str, str]:
    where = "tls_server_config"
    if raw is None or raw == {}:
        return None, "NoClientCert", "TLS12"
    section = _mapping(path, raw, where)
    _known_keys(path, section, _TLS_KEYS, _TLS_UNSUPPORTED, where + ".")
    cert, key, ca = (_string(path, section, k, where)
                     for k in ("cert_file", "key_file", "client_ca_file"))
    if not cert or not key:
        missing = "cert_file" if not cert else "key_file"
        raise WebConfigError(path, f"{where}.{missing} is required for TLS")
    client_auth = _client_auth(path, _string(path, section, "client_auth_type", where), ca)
    low, high = (_string(path, section, k, where) for k in ("min_version", "max_version"))
    for version_key, name in (("min_version", low), ("max_version", high)):
        if name and name not in _TLS_VERSIONS:
            raise WebConfigError(path, f"{where}.{version_key} {name!r} is not one of "
                                 f"{', '.join(_TLS_VERSIONS)}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _TLS_VERSIONS[low or "TLS12"]
    if high:
        context.maximum_version = _TLS_VERSIONS[high]
    if section.get("prefer_server_cipher_suites", True):
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_files(path, context, base / cert, base / key, base / ca if ca else None)
    context.verify_mode = _CLIENT_AUTH[client_auth]
    return context, client_auth, low or "TLS12"


def _client_auth(path: str | os.PathLike[str], given: str, ca: str) -> str:
    where = "tls_server_config"
    client_auth = given or ("RequireAndVerifyClientCert" if ca else "NoClientCert")
    if client_auth in _CLIENT_AUTH_UNSUPPORTED:
        raise WebConfigError(path, f"{where}.client_auth_type {client_auth} is not supported "
                             "(Python's ssl verifies every client certificate it asks for); "
                             "use VerifyClientCertIfGiven or RequireAndVerifyClientCert")
    if client_auth not in _CLIENT_AUTH:
        raise WebConfigError(path, f"{where}.client_auth_type {client_auth!r} is not one of "
                             f"{', '.join(_CLIENT_AUTH)}")
    if _CLIENT_AUTH[client_auth] != ssl.CERT_NONE and not ca:
        raise WebConfigError(path, f"{where}.client_ca_file is required with "
                             f"client_auth_type {client_auth}")
    if ca and client_auth == "NoClientCert":
        raise WebConfigError(path, f"{where}.client_ca_file is set but client_auth_type is "
                             "NoClientCert: client certificates would not be checked")
    return client_auth


def _load_files(
    path: str | os.PathLike[str], context: ssl.SSLContext, cert: Path, key: Path,
    ca: Path | None,
) -> None:
    where = "tls_server_config"
    for name, file in (("cert_file", cert), ("key_file", key)):
        if not file.is_file() or not os.access(file, os.R_OK):
            raise WebConfigError(path, f"{where}.{name} {file}: cannot read it")
    try:
        context.load_cert_chain(cert, key, password=no_passphrase)
    except EncryptedKey:
        raise WebConfigError(path, f"{where}.key_file {key} is encrypted; give an "
                             "unencrypted key (readable by this process only)") from None
    except ssl.SSLError as exc:
        reason = "do not match" if "KEY_VALUES_MISMATCH" in str(exc) else "cannot be loaded"
        raise WebConfigError(path, f"{where}.cert_file {cert} and key_file {key} "
                             f"{reason} ({exc.reason or 'not PEM'})") from None
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise WebConfigError(path, f"{where}.client_ca_file {ca}: cannot load it "
                                 f"({reason})") from None


class EncryptedKey(Exception):
    """Raised by :func:`no_passphrase`: the key file is encrypted."""


def no_passphrase() -> bytes:
    """``password`` for ``SSLContext.load_cert_chain``: without it, OpenSSL would prompt on
    the terminal for an encrypted key's pass phrase (blocking start-up, or a background
    thread); with it, loading such a key raises :class:`EncryptedKey`."""
    raise EncryptedKey


def _users(path: str | os.PathLike[str], raw: Any) -> dict[str, bytes]:
    if raw is None:
        return {}
    section = _mapping(path, raw, "basic_auth_users")
    users = {}
    for user, hashed in section.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise WebConfigError(path, "basic_auth_users: user names must be non-empty "
                                 "strings without ':'")
        if not isinstance(hashed, str) or not _BCRYPT_HASH.match(hashed):
            # Never echo the value: it may be a plaintext password.
            raise WebConfigError(path, f"basic_auth_users.{user} is not a bcrypt hash (a "
                                 "plaintext password?); make one with the Python that has "
                                 f"otel-celery-metrics installed: {BCRYPT_COMMAND}")
        users[user] = hashed.encode()
    if users:
        try:
            import bcrypt  # noqa: F401 - fail at load, not at the first scrape
        except ImportError:
            raise WebConfigError(path, "basic_auth_users needs bcrypt: pip install "
                                 "'otel-celery-metrics[prometheus]'") from None
    return users


def _http(path: str | os.PathLike[str], raw: Any) -> tuple[tuple[str, str], ...]:
    where = "http_server_config"
    if raw is None:
        return ()
    section = _mapping(path, raw, where)
    _known_keys(path, section, _HTTP_KEYS, (), where + ".")
    if not isinstance(section.get("http2", True), bool):
        raise WebConfigError(path, f"{where}.http2 must be true or false")
    headers = []
    canonical = {h.lower(): h for h in _HEADERS}
    for name, value in _mapping(path, section.get("headers") or {}, where + ".headers").items():
        header = canonical.get(str(name).lower())
        if header is None:
            raise WebConfigError(path, f"{where}.headers: {name!s} cannot be set (allowed: "
                                 f"{', '.join(_HEADERS)})")
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            raise WebConfigError(path, f"{where}.headers.{header} must be a one-line string")
        headers.append((header, value))
    return tuple(headers)

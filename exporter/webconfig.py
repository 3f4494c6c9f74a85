"""`--web-config FILE`: TLS and basic auth in the exporter-toolkit format shared by Prometheus exporters.

    tls_server_config:
      cert_file: server.crt            # relative paths are relative to this file's directory
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert
      client_ca_file: ca.crt
      min_version: TLS12
    basic_auth_users:
      prometheus: $2y$10$...           # bcrypt hash, e.g. from `htpasswd -nBC 10 "" | tr -d ':\\n'`

The file is validated as a whole (every error located by file, line and key) and
the certificate and key are loaded at startup, so a typo fails `pgvigil serve`
instead of the first scrape. Toolkit keys that pgvigil cannot honour (inline PEM,
cipher suites, client SAN pinning, rate limits, extra headers) are rejected rather
than silently ignored: a security setting that is ignored is worse than an error.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import bcrypt

from exporter.config import ConfigError
from exporter.files import CONFIG_LIMIT, PEM_LIMIT, UnreadableFile, check_regular, read_text, shown_path
from exporter.schema import Checker, Key, Section
from exporter.yamlsource import LocatedData, YamlSyntaxError, load_located

# Go's tls.ClientAuthType names -> Python's verify modes. The two "accept any
# certificate without verifying it" modes have no Python equivalent, and they are
# insecure anyway (the toolkit's own docs say so), so they are rejected.
CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_UNVERIFIED_AUTH_TYPES = ("RequestClientCert", "RequireAnyClientCert")
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

TOP_KEYS = Section(
    "web config",
    Key("tls_server_config", doc="serve HTTPS (below); absent or empty: plain HTTP"),
    Key("http_server_config", doc="accepted for compatibility; pgvigil serves HTTP/1.1"),
    Key("basic_auth_users", doc="user name -> bcrypt hash"),
)
TLS_KEYS = Section(
    "tls_server_config",
    Key("cert_file", "text", required=True, doc="server certificate (PEM), relative to the web config file"),
    Key("key_file", "text", required=True, doc="its private key (PEM)"),
    Key("client_ca_file", "text", doc="CA that signs client certificates"),
    Key("client_auth_type", default="NoClientCert", doc=", ".join(CLIENT_AUTH_TYPES)),
    Key("min_version", default="TLS12", doc=", ".join(TLS_VERSIONS)),
    Key("max_version", default="TLS13", doc=", ".join(TLS_VERSIONS)),
    Key("prefer_server_cipher_suites", "bool", True, doc="the server's cipher order wins"),
)
HTTP_KEYS = Section("http_server_config", Key("http2", "bool", doc="accepted, ignored"))
# Valid in the toolkit's format, not implemented here: say so instead of "unknown key".
_UNSUPPORTED = {
    "rate_limit": "put a reverse proxy in front of pgvigil to rate-limit",
    "cert": "inline PEM is not supported; use cert_file",
    "key": "inline PEM is not supported; use key_file",
    "client_ca": "inline PEM is not supported; use client_ca_file",
    "client_allowed_sans": "client SAN pinning is not supported; use a dedicated client CA",
    "cipher_suites": "pgvigil uses OpenSSL's default cipher suites; restrict them with min_version: TLS13",
    "curve_preferences": "pgvigil uses OpenSSL's default curves",
    "headers": "extra response headers are not supported; set them in a reverse proxy",
}
# bcrypt's modular crypt format: $2a$/$2b$/$2y$, a two-digit cost, 53 characters of salt and hash.
_BCRYPT_HASH = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}\Z")  # \Z: no trailing newline


class WebConfigError(ConfigError):
    """Invalid web config; `.errors` lists every problem as `file:line: key: message`."""


@dataclass(frozen=True)
class TLSSettings:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    client_auth_type: str = TLS_KEYS["client_auth_type"].default
    min_version: str = TLS_KEYS["min_version"].default
    max_version: str = TLS_KEYS["max_version"].default
    prefer_server_cipher_suites: bool = TLS_KEYS["prefer_server_cipher_suites"].default


@dataclass(frozen=True)
class WebConfig:
    source: str
    tls: TLSSettings | None = None
    users: Mapping[str, str] = field(default_factory=dict, repr=False)  # user -> bcrypt hash

    def ssl_context(self) -> ssl.SSLContext | None:
        return build_ssl_context(self.tls) if self.tls else None

    def wrap_socket(self) -> Callable[[socket.socket], socket.socket] | None:
        """The listening-socket wrapper for make_server/start_server, or None for plain HTTP."""
        context = self.ssl_context()
        if context is None:
            return None
        # The handshake runs in the request's thread (do_handshake_on_connect=False):
        # done at accept() it would let one silent client block every other scrape.
        return lambda sock: context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)

    def authorizer(self) -> BasicAuth | None:
        return BasicAuth(self.users) if self.users else None


# ---------------------------------------------------------------------------
# loading

def load_web_config(path: str | os.PathLike) -> WebConfig:
    """Read, validate and try out a web config file; raises WebConfigError listing every problem."""
    try:
        text = read_text(path, CONFIG_LIMIT, "web config file")  # bad bytes: located by load_located
    except UnreadableFile as exc:
        raise WebConfigError([str(exc)]) from None
    return parse_web_config(text, source=str(path), base_dir=Path(path).resolve().parent)


def parse_web_config(text: str, source: str = "<string>", base_dir: Path | None = None) -> WebConfig:
    try:
        doc = load_located(text, source)
    except YamlSyntaxError as exc:
        raise WebConfigError([str(exc)]) from None
    checker = _Checker(doc, base_dir or Path.cwd())
    config = checker.web_config()
    if checker.errors:
        raise WebConfigError(checker.located.in_file_order())
    return config


class _Checker(Checker):
    def __init__(self, doc: LocatedData, base_dir: Path) -> None:
        super().__init__(doc)
        self.base_dir = base_dir

    def unknown_key(self, key: Any, allowed: tuple[str, ...]) -> str:
        if key in _UNSUPPORTED:
            return f"'{key}' is not supported by pgvigil: {_UNSUPPORTED[key]}"
        return super().unknown_key(key, allowed)

    def web_config(self) -> WebConfig:
        top = self.mapping(self.doc.data, (), TOP_KEYS)
        http = self.mapping(top.get("http_server_config"), ("http_server_config",), HTTP_KEYS)
        # Checked, then ignored: pgvigil serves HTTP/1.1, which every Prometheus speaks.
        self.scalars(http, ("http_server_config",), HTTP_KEYS)
        tls = self.tls(top.get("tls_server_config"))
        users = self.users(top.get("basic_auth_users"))
        return WebConfig(source=self.doc.source, tls=tls, users=users)

    def file(self, name: str, key: str) -> Path | None:
        path = ("tls_server_config", key)
        file = Path(os.path.expanduser(name))
        file = file if file.is_absolute() else self.base_dir / file
        try:  # ssl opens the file by name: refused here first when a FIFO would hang it, /dev/zero fill memory
            check_regular(file, PEM_LIMIT, key)
        except UnreadableFile as exc:
            self.error(path, f"cannot read {shown_path(name)}: {exc.reason}")
            return None
        return file

    def tls(self, value: Any) -> TLSSettings | None:
        raw = self.mapping(value, ("tls_server_config",), TLS_KEYS)
        if not raw:
            return None  # absent or empty: plain HTTP, as in the toolkit
        before = len(self.errors)
        self.missing(raw, ("tls_server_config",), TLS_KEYS)
        values = self.scalars(raw, ("tls_server_config",), TLS_KEYS)
        files = {key: self.file(values[key], key) for key in ("cert_file", "key_file", "client_ca_file")
                 if key in values}
        settings: dict[str, Any] = {}
        if "prefer_server_cipher_suites" in values:
            settings["prefer_server_cipher_suites"] = values["prefer_server_cipher_suites"]
        auth = raw.get("client_auth_type", TLS_KEYS["client_auth_type"].default)
        if auth in _UNVERIFIED_AUTH_TYPES:
            self.error(("tls_server_config", "client_auth_type"),
                       f"{auth} accepts client certificates without verifying them; use RequireAndVerifyClientCert "
                       "(or VerifyClientCertIfGiven) with client_ca_file")
        elif self.choice(auth, ("tls_server_config", "client_auth_type"), CLIENT_AUTH_TYPES):
            settings["client_auth_type"] = auth
            if "client_ca_file" in raw and auth == "NoClientCert":
                self.error(("tls_server_config", "client_ca_file"),
                           "a client CA is set but client_auth_type is NoClientCert; set client_auth_type: "
                           "RequireAndVerifyClientCert")
            if auth != "NoClientCert" and "client_ca_file" not in raw:
                self.error(("tls_server_config", "client_auth_type"), f"{auth} needs client_ca_file to verify clients")
        for key in ("min_version", "max_version"):
            if key in raw and self.choice(raw[key], ("tls_server_config", key), TLS_VERSIONS):
                settings[key] = raw[key]
        low = settings.get("min_version", TLS_KEYS["min_version"].default)
        high = settings.get("max_version", TLS_KEYS["max_version"].default)
        if TLS_VERSIONS[low] > TLS_VERSIONS[high]:
            self.error(("tls_server_config", "min_version"), f"min_version {low} is above max_version {high}")
        cert_file, key_file = files.get("cert_file"), files.get("key_file")
        if len(self.errors) > before or cert_file is None or key_file is None or None in files.values():
            return None
        tls = TLSSettings(cert_file=cert_file, key_file=key_file, client_ca_file=files.get("client_ca_file"),
                          **settings)
        try:
            build_ssl_context(tls)  # load the files now: a bad key fails startup, not the first scrape
        except (ssl.SSLError, OSError, ValueError) as exc:
            self.error(("tls_server_config",), f"cannot use the certificate, key or client CA: {_ssl_reason(exc)}")
            return None
        return tls

    def users(self, value: Any) -> dict[str, str]:
        raw = self.mapping(value, ("basic_auth_users",), None)
        users = {}
        for user, hashed in raw.items():
            path = ("basic_auth_users", user)
            if not isinstance(user, str) or not user or ":" in user:
                self.error(path, "expected a user name without ':'")
            elif not isinstance(hashed, str) or not _BCRYPT_HASH.match(hashed):
                # Never echo the value: it may be a plain password pasted by mistake.
                self.error(path, "expected a bcrypt hash such as $2y$10$... (generate one with "
                                 "htpasswd -nBC 10 \"\" | tr -d ':\\n'); plain passwords are not accepted")
            else:
                users[user] = hashed
        return users


def build_ssl_context(tls: TLSSettings) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[tls.min_version]
    context.maximum_version = TLS_VERSIONS[tls.max_version]
    context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    context.verify_mode = CLIENT_AUTH_TYPES[tls.client_auth_type]
    if tls.client_ca_file is not None:
        context.load_verify_locations(cafile=str(tls.client_ca_file))
    if tls.prefer_server_cipher_suites:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    return context


def _ssl_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return (reason or getattr(exc, "strerror", None) or str(exc)).replace("_", " ").lower()


# ---------------------------------------------------------------------------
# basic auth

class BasicAuth:
    """Checks an `Authorization: Basic ...` header against bcrypt hashes.

    bcrypt is deliberately slow (~50 ms at cost 10), and Prometheus sends the same
    credentials on every scrape, so successful checks are cached by a SHA-256 of
    user, password and hash, the way the exporter toolkit does. Unknown users still
    cost one bcrypt check, so response time does not reveal which users exist.
    """

    _dummy_hash: bytes | None = None

    def __init__(self, users: Mapping[str, str]) -> None:
        self.users = dict(users)
        self._verified: set[bytes] = set()
        self._lock = threading.Lock()

    def __call__(self, header: str | None) -> bool:
        credentials = parse_basic_header(header)
        if credentials is None:
            return False
        user, password = credentials
        hashed = self.users.get(user)
        if hashed is None:
            _check_password(password, self._dummy())
            return False
        key = hashlib.sha256(b"\0".join([user.encode(), password, hashed.encode()])).digest()
        with self._lock:
            if key in self._verified:
                return True
        if not _check_password(password, hashed.encode()):
            return False
        with self._lock:
            self._verified.add(key)
        return True

    @classmethod
    def _dummy(cls) -> bytes:
        if cls._dummy_hash is None:
            cls._dummy_hash = bcrypt.hashpw(b"pgvigil-no-such-user", bcrypt.gensalt(10))
        return cls._dummy_hash


def parse_basic_header(header: str | None) -> tuple[str, bytes] | None:
    """(user, password bytes) from `Basic base64(user:password)`, or None when malformed."""
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


def _check_password(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # longer than bcrypt's 72 bytes, or a malformed hash: never a match
        return False


def hash_password(password: str, cost: int = 10) -> str:
    """A bcrypt hash for basic_auth_users (tests and `python -m` one-liners)."""
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(cost)).decode("ascii")

"""Parse, validate and redact broker URLs.

``kafka://user:secret@h1:9092,h2:9092/path?client_id=x`` becomes a :class:`BrokerURL` with a
list of hosts, credentials, a path and query options. ``str()`` and ``repr()`` are always
redacted; only drivers call :meth:`BrokerURL.password` to use the secret.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, unquote

from channels.errors import ConfigurationError

__all__ = ["BrokerURL", "parse_url", "redact"]

T = TypeVar("T")

_SCHEME = re.compile(r"^[a-z][a-z0-9+.\-]*$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class BrokerURL:
    """A parsed broker URL. Its text forms never contain the password."""

    scheme: str
    hosts: tuple[tuple[str, int | None], ...] = ()
    username: str | None = None
    _password: str | None = field(default=None, repr=False)
    path: str = ""
    query: Mapping[str, str] = field(default_factory=dict)

    @property
    def password(self) -> str | None:
        return self._password

    @property
    def host(self) -> str | None:
        return self.hosts[0][0] if self.hosts else None

    @property
    def port(self) -> int | None:
        return self.hosts[0][1] if self.hosts else None

    @property
    def base_scheme(self) -> str:
        """The scheme without its ``+variant`` (``kafka+ssl`` -> ``kafka``)."""
        return self.scheme.split("+", 1)[0]

    def host_list(self, default_port: int) -> list[tuple[str, int]]:
        """Every host with its port, the default filled in."""
        return [(h, p if p is not None else default_port) for h, p in self.hosts]

    def option(self, name: str, default: T, convert: Callable[[str], T] | None = None) -> T:
        """Return query option ``name`` converted like ``default`` (or with ``convert``)."""
        if name not in self.query:
            return default
        raw = self.query[name]
        try:
            if convert is not None:
                return convert(raw)
            if isinstance(default, bool):
                low = raw.lower()
                if low in _TRUE:
                    return True  # type: ignore[return-value]
                if low in _FALSE:
                    return False  # type: ignore[return-value]
                raise ValueError(raw)
            if isinstance(default, int):
                return int(raw)  # type: ignore[return-value]
            if isinstance(default, float):
                return float(raw)  # type: ignore[return-value]
            return raw  # type: ignore[return-value]
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"invalid value {raw!r} for URL option {name!r}", broker=self
            ) from exc

    def check_options(self, allowed: Iterable[str]) -> None:
        """Raise ConfigurationError for query options the driver does not know."""
        known = set(allowed)
        unknown = sorted(set(self.query) - known)
        if unknown:
            # an unknown option may be a misspelt secret one: its value is not shown
            shown = self._render(
                "***" if self._password is not None else None, hide_secrets=True, hide=frozenset(unknown)
            )
            raise ConfigurationError(
                f"unknown URL option(s) {', '.join(unknown)} for {self.scheme}://; "
                f"known: {', '.join(sorted(known)) or 'none'}",
                broker=shown,
            )

    def _netloc(self, password: str | None) -> str:
        auth = ""
        if self.username is not None:
            auth = quote(self.username, safe="")
            if password is not None:
                auth += ":" + password
            auth += "@"
        hosts = ",".join(
            (f"[{h}]" if ":" in h else h) + (f":{p}" if p is not None else "")
            for h, p in self.hosts
        )
        return auth + hosts

    def _render(self, password: str | None, *, hide_secrets: bool, hide: frozenset[str] = frozenset()) -> str:
        text = f"{self.scheme}://{self._netloc(password)}{self.path}"
        if self.query:
            text += "?" + "&".join(
                f"{k}={'***' if (hide_secrets and _secret_option(k)) or k in hide else quote(v, safe='')}"
                for k, v in self.query.items()
            )
        return text

    def redacted(self) -> str:
        return self._render("***" if self._password is not None else None, hide_secrets=True)

    def unredacted(self) -> str:
        """The full URL with its secret. Only for handing to a client library."""
        return self._render(
            quote(self._password, safe="") if self._password is not None else None, hide_secrets=False
        )

    def __str__(self) -> str:
        return self.redacted()

    def __repr__(self) -> str:
        return f"BrokerURL({self.redacted()!r})"


def _secret_option(name: str) -> bool:
    low = name.lower()
    return any(word in low for word in ("password", "passwd", "pwd", "secret", "token", "passphrase", "credential"))


def parse_url(url: str | BrokerURL) -> BrokerURL:
    """Parse ``url``; raise ConfigurationError (with the URL redacted) if it is malformed."""
    if isinstance(url, BrokerURL):
        return url
    if not isinstance(url, str):
        raise ConfigurationError(f"broker URL must be a string, not {type(url).__name__}")
    text = url.strip()
    if "://" not in text:
        raise ConfigurationError(
            f"broker URL {_redact_text(text)!r} has no scheme; expected e.g. memory:// or kafka://host:9092"
        )
    scheme, rest = text.split("://", 1)
    scheme = scheme.lower()
    if not _SCHEME.match(scheme):
        raise ConfigurationError(f"invalid scheme {scheme!r} in broker URL")
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority = rest[:end]
    _, colon, port_or_secret = authority.rpartition(":")
    path = rest[end:].split("?", 1)[0] if rest[end:end + 1] == "/" else ""
    if (colon and "@" not in authority and "@" in rest[end:] and not port_or_secret.isdigit()) or (
        "@" in authority and "@" in path
    ):
        # "user:pa?ss@host" or "user:p@ss/word@host": the password holds a '/', '?' or '#'
        # that ends the host part
        raise ConfigurationError(
            f"broker URL {_redact_text(text)!r} is ambiguous: percent-encode '/', '?' and '#' "
            "in a user name or password (e.g. ? as %3F)"
        )
    query_text = ""
    if "?" in rest:
        rest, query_text = rest.split("?", 1)
    if "#" in query_text:
        query_text = query_text.split("#", 1)[0]
    netloc, slash, path = rest.partition("/")
    path = slash + path if slash else ""
    username: str | None = None
    password: str | None = None
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, colon, secret = userinfo.partition(":")
        username = unquote(user)
        password = unquote(secret) if colon else None
    hosts: list[tuple[str, int | None]] = []
    for part in filter(None, netloc.split(",")):
        hosts.append(_parse_host(part, scheme))
    try:
        pairs = parse_qsl(query_text, keep_blank_values=True, strict_parsing=bool(query_text))
    except ValueError as exc:
        raise ConfigurationError(f"malformed query string in broker URL for {scheme}://") from exc
    query: dict[str, str] = {}
    for key, value in pairs:
        if key in query:
            raise ConfigurationError(f"URL option {key!r} given twice for {scheme}://")
        query[key] = value
    return BrokerURL(scheme, tuple(hosts), username, password, path, query)


def _parse_host(part: str, scheme: str) -> tuple[str, int | None]:
    host, port_text = part, ""
    if part.startswith("["):
        end = part.find("]")
        if end < 0:
            raise ConfigurationError(f"unterminated IPv6 address in {scheme}:// URL")
        host, port_text = part[1:end], part[end + 1 :].lstrip(":")
    elif part.count(":") == 1:
        host, port_text = part.split(":")
    if not host or any(c in host for c in " /\\?#@[]"):
        raise ConfigurationError(f"invalid host {host!r} in {scheme}:// URL")
    if not port_text:
        return host, None
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ConfigurationError(f"invalid port {port_text!r} in {scheme}:// URL")
    return host, int(port_text)


#: user:password@ in the text of a URL that does not parse; the password runs to the last
#: '@' of the text, so an unencoded '@', '/', '?' or whitespace in it leaves no piece visible
_USERINFO = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)?(?P<user>[^:@/\s]*):(?P<pw>[\s\S]*)@"
)


def redact(value: Any) -> str:
    """Text for ``value`` with any URL password replaced by ``***``."""
    if isinstance(value, BrokerURL):
        return value.redacted()
    text = str(value)
    try:
        return parse_url(text).redacted()
    except ConfigurationError:
        return _redact_text(text)


def _redact_text(text: str) -> str:
    return _USERINFO.sub(lambda m: f"{m['scheme'] or ''}{m['user']}:***@", text)

"""Which addresses the gateway may call on a tenant's behalf (external endpoints).

A tenant gives an external endpoint's base URL; without a check, a URL such as
``http://169.254.169.254/`` or ``http://10.0.0.5:6379/`` would make the gateway call the
platform's own network. Hosts that are or resolve to loopback, private, link-local, multicast,
reserved, unspecified or otherwise non-public addresses are refused, unless the operator's
allow-list (``GATEWAY_EXTERNAL_ALLOW``: host names, addresses and CIDR ranges) admits them.

The check runs twice: when an endpoint is saved (a clear error on the field), and when the
gateway opens a connection, because DNS may answer differently later. At connect time every
address the name resolves to is checked and the connection goes to a checked address, never to
a second lookup. The platform's own replicas are not external endpoints and are not checked.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_HOST_RE = re.compile(r"^[a-z0-9_]([a-z0-9_.-]{0,251}[a-z0-9_])?$")
# Checked in this order; the first that holds names the refusal.
_CLASSES = (
    ("is_unspecified", "an unspecified address"),
    ("is_loopback", "a loopback address"),
    ("is_link_local", "a link-local address"),
    ("is_multicast", "a multicast address"),
    ("is_reserved", "a reserved address"),
    ("is_private", "a private address"),
)
ALLOW_SETTING = "GATEWAY_EXTERNAL_ALLOW"
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


class EgressRefused(Exception):
    """The host is, or resolves to, an address the gateway may not call."""


def address_class(address: Address) -> str | None:
    """Why ``address`` is not a public one ("a loopback address", ...), or None if it is.

    IPv4 addresses carried inside IPv6 ones (``::ffff:127.0.0.1``, 6to4, NAT64's well-known
    prefix ``64:ff9b::/96``, where a translator reaches the IPv4 address) are judged as IPv4;
    NAT64's local-use prefix ``64:ff9b:1::/48`` is a private network's."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64_LOCAL:
            return "a private address"
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            address = embedded
    for attribute, words in _CLASSES:
        if getattr(address, attribute):
            return words
    if not address.is_global:
        return "not a public address"
    return None


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """The operator's allow-list: host names admitted as they are, and address ranges."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()

    def host_allowed(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def address_problem(self, address: Address) -> str | None:
        """Why the gateway may not call ``address`` (None when it may)."""
        problem = address_class(address)
        if problem is None or any(address in network for network in self.networks):
            return None
        return problem


@lru_cache(maxsize=8)
def egress_policy(entries: tuple[str, ...]) -> EgressPolicy:
    """Parse allow-list entries (host names, addresses, CIDR ranges); bad entries fail loudly."""
    hosts: set[str] = set()
    networks: list[Network] = []
    for raw in entries:
        entry = raw.strip().lower()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            continue
        except ValueError:
            pass
        host = entry.rstrip(".")
        if not _HOST_RE.match(host) or "/" in host:
            raise ImproperlyConfigured(
                f"{ALLOW_SETTING}: {raw!r} is neither a host name nor an address or CIDR range"
            )
        hosts.add(host)
    return EgressPolicy(frozenset(hosts), tuple(networks))


def host_resolve(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host`` (blocking; call it off the loop).

    The one place names are resolved, for validation and for connections alike."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def addresses_check(policy: EgressPolicy, host: str, addresses: Iterable[str]) -> None:
    """Raise EgressRefused unless every one of ``host``'s ``addresses`` may be called."""
    literal = _literal(host)
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        problem = policy.address_problem(address)
        if problem is not None:
            # Which address a name resolves to is not told: refusals would otherwise map the
            # platform's own network for whoever tries names.
            where = (
                f"{host} is {problem}"
                if literal is not None
                else f"{host} resolves to a private or internal address"
            )
            raise EgressRefused(
                f"{where}; the gateway only calls public addresses"
                f" (the platform's operator can allow it with {ALLOW_SETTING})"
            )


def host_addresses(policy: EgressPolicy, host: str, port: int) -> list[str] | None:
    """The checked addresses to connect to for ``host``, or None when the operator allows the
    host by name (connect to the name). Raises EgressRefused, or OSError when it does not
    resolve."""
    if policy.host_allowed(host):
        return None
    literal = _literal(host)
    addresses = [str(literal)] if literal is not None else host_resolve(host, port)
    addresses_check(policy, host, addresses)
    return addresses


def host_ascii(host: str) -> str:
    """``host`` as DNS and HTTP carry it: a name with non-ASCII letters in its IDNA form
    (``bücher.example`` is ``xn--bcher-kva.example``). Raises UnicodeError for a name that has
    none."""
    return host if host.isascii() else host.encode("idna").decode("ascii")


_LABEL_RE = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


def http_url_problem(url: str, *, not_http: str) -> str | None:
    """What is wrong with the form of an http(s) URL, for a form's error (None when nothing):
    ``not_http`` when it has no http(s) scheme or no host, else what is malformed (brackets,
    port, spaces, a host name no DNS can hold). Where it points is ``url_problem``'s question."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port  # parsing the port raises for a bad one
    except ValueError as error:  # "Invalid IPv6 URL", "Port out of range 0-65535"...
        return f"This is not a valid URL: {error}."
    if parts.scheme not in ("http", "https") or not host:
        return not_http
    if port == 0:  # nothing listens there; a connection would go to the scheme's port instead
        return "The port must be between 1 and 65535."
    if any(c.isspace() or not c.isprintable() for c in url):
        return "A URL has no spaces or control characters; encode them (%20)."
    if _literal(host) is None:
        try:
            ascii_host = host_ascii(host)
        except UnicodeError:
            ascii_host = ""
        labels = ascii_host.removesuffix(".").split(".")
        if not ascii_host or not all(_LABEL_RE.match(label) for label in labels):
            return f"'{host}' is not a valid host name."
    return None


def url_problem(url: str, policy: EgressPolicy) -> str | None:
    """Why the gateway may not call ``url``, for a form's error (None when it may).

    A name that does not resolve now is accepted: it may be registered later, and the check at
    connect time refuses it then if it points somewhere private."""
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return "The port is not a number between 0 and 65535."
    try:
        host_addresses(policy, host_ascii(parts.hostname or ""), port)
    except EgressRefused as refused:
        return f"{refused}."
    except (OSError, UnicodeError):
        return None
    return None

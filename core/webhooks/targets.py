"""Where a webhook may be sent: an http(s) URL whose host resolves to public addresses only.

A ``fal_webhook`` URL is chosen by the caller and POSTed to by our processes, from inside our
network: without a check it reaches loopback services, cloud metadata (``169.254.169.254``) and
private hosts (server-side request forgery). So, unless ``webhook_allow_private`` is set:

- at submit, the URL must be http(s) with a host whose every address is public (422 otherwise);
- at delivery, the host is resolved again and checked (DNS may have changed since), and the
  connection goes to the very address that was checked (``WebhookTarget``: the URL with that
  address, the original ``Host`` header and TLS server name), so a second lookup cannot swap it.

Redirects are never followed by the sender, so a receiver cannot bounce the POST elsewhere.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urlsplit, urlunsplit

MAX_WEBHOOK_URL_CHARS = 2048
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookTargetError(ValueError):
    """A webhook URL this deployment refuses to send to (the message says why, for the 422)."""


@dataclass(frozen=True)
class WebhookTarget:
    """One way to reach a webhook: the URL to connect to plus what keeps the original host visible."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, str] = field(default_factory=dict)


def is_public_address(address: IpAddress) -> bool:
    """Not loopback, private, link-local, multicast, unspecified, reserved or shared (CGNAT)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not (
        address.is_multicast
        or address.is_loopback
        or address.is_link_local
        or address.is_private
        or address.is_reserved
        or address.is_unspecified
    )


def parse_webhook_url(url: str) -> SplitResult:
    """The URL's parts when it is an absolute http(s) URL with a host; ``WebhookTargetError`` otherwise."""
    if len(url) > MAX_WEBHOOK_URL_CHARS:
        raise WebhookTargetError(f"Webhook URL should have at most {MAX_WEBHOOK_URL_CHARS} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise WebhookTargetError("Webhook URL should not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port outside 0..65535
    except ValueError:
        raise WebhookTargetError("Webhook URL is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise WebhookTargetError("Webhook URL should use http or https")
    if not parts.hostname:
        raise WebhookTargetError("Webhook URL should name a host")
    return parts


def resolve_addresses(host: str, port: int) -> list[IpAddress]:
    """Every address ``host`` resolves to (an IP literal is itself), in the resolver's order."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise WebhookTargetError(f"Webhook host {host!r} could not be resolved") from None
    addresses: list[IpAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])  # drop an IPv6 zone
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise WebhookTargetError(f"Webhook host {host!r} could not be resolved")
    return addresses


def public_addresses(parts: SplitResult) -> list[IpAddress]:
    """The host's addresses, when all of them are public; ``WebhookTargetError`` otherwise."""
    host = parts.hostname or ""
    addresses = resolve_addresses(host, parts.port or default_port(parts))
    if not all(is_public_address(address) for address in addresses):
        raise WebhookTargetError(
            "Webhook URL points to a loopback, private, link-local or multicast address "
            "(allowed only with BITDANCE_WEBHOOK_ALLOW_PRIVATE=true)"
        )
    return addresses


def check_webhook_url(url: str, allow_private: bool) -> None:
    """Refuse (``WebhookTargetError``) a URL that may not receive webhooks; blocking (DNS)."""
    parts = parse_webhook_url(url)
    if not allow_private:
        public_addresses(parts)


def webhook_targets(url: str, allow_private: bool) -> list[WebhookTarget]:
    """How to deliver to ``url`` now: the URL itself, or (checked) one pinned target per public address."""
    parts = parse_webhook_url(url)
    if allow_private:
        return [WebhookTarget(url)]
    return [pinned_target(parts, address) for address in public_addresses(parts)]


def pinned_target(parts: SplitResult, address: IpAddress) -> WebhookTarget:
    """``parts`` sent to ``address``, with the original host as ``Host`` and as the TLS server name."""
    literal = f"[{address}]" if address.version == 6 else str(address)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = (f"{userinfo}@" if userinfo else "") + literal + (f":{parts.port}" if parts.port else "")
    host_header = parts.netloc.rpartition("@")[2]
    extensions = {"sni_hostname": parts.hostname or ""} if parts.scheme.lower() == "https" else {}
    return WebhookTarget(urlunsplit(parts._replace(netloc=netloc)), {"Host": host_header}, extensions)


def default_port(parts: SplitResult) -> int:
    return 443 if parts.scheme.lower() == "https" else 80

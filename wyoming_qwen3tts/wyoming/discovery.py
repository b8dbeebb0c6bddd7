"""Zeroconf (mDNS) advertisement of the server as `_wyoming._tcp.local.`.

Home Assistant's Wyoming integration browses for `_wyoming._tcp.local.` and offers to connect to the
address and port that a found service announces, so the announced address must be one a client can
reach: never the wildcard the server is bound to. `reachable_address()` picks it; `advertise()`
registers the service with python-zeroconf's async API and returns an `Advertisement` whose `close()`
sends the goodbye packets, so the entry disappears from Home Assistant instead of lingering until its TTL.

wyoming ships `wyoming.zeroconf.HomeAssistantZeroconf`, but it is not used here: it finds the address by
routing towards the mDNS group, which raises where no route exists (a host or network namespace with only
loopback), it ignores the address the server is actually bound to, and it never withdraws the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
from collections.abc import Sequence
from pathlib import Path

from zeroconf import InterfaceChoice
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

_LOGGER = logging.getLogger(__name__)

SERVICE_TYPE = "_wyoming._tcp.local."
DEFAULT_NAME = "qwen3-tts"

# A UDP connect() only asks the kernel for a route and the source address it would use; nothing is sent.
# The target is a documentation address (RFC 5737), so no real host is ever named.
_ROUTE_PROBE = ("192.0.2.1", 9)
_LOOPBACK = "127.0.0.1"
_IFF_UP = 0x1


def _parse_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Return host as an IP address if it is a literal (an IPv6 zone such as %eth0 is dropped)."""
    try:
        return ipaddress.ip_address(host.strip().strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def _is_wildcard(host: str | None) -> bool:
    """Whether a bind host means "all interfaces" (None, "", 0.0.0.0, ::)."""
    if host is None or not host.strip():
        return True
    addr = _parse_ip(host)
    return addr is not None and addr.is_unspecified


def _resolve(host: str) -> str:
    """Return host as an IP address string, resolving a name (IPv4 preferred)."""
    addr = _parse_ip(host)
    if addr is not None:
        return str(addr)
    try:
        infos = socket.getaddrinfo(host.strip(), None, type=socket.SOCK_STREAM)
    except OSError as err:
        raise ValueError(f"cannot resolve {host!r} to an address to advertise: {err}") from err
    addrs = [str(info[4][0]) for info in infos]
    ipv4 = [a for a in addrs if isinstance(_parse_ip(a), ipaddress.IPv4Address)]
    return (ipv4 or addrs)[0]


def _routed_address() -> str | None:
    """Source address of the IPv4 default route, or None when there is no route."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(_ROUTE_PROBE)
            address = sock.getsockname()[0]
        except OSError:
            return None
    return None if _is_wildcard(address) else address


def _interface_is_up(name: str) -> bool:
    """Whether an interface is up (Linux sysfs; assumed up where that cannot be read)."""
    try:
        flags = (Path("/sys/class/net") / name.split(":", 1)[0] / "flags").read_text()
        return bool(int(flags, 16) & _IFF_UP)
    except (OSError, ValueError):
        return True


def _interface_address() -> str | None:
    """Best IPv4 address of an interface that is up: global/private, then link-local, then loopback."""
    import ifaddr  # a dependency of zeroconf

    candidates: list[ipaddress.IPv4Address] = []
    for adapter in ifaddr.get_adapters():
        if not _interface_is_up(adapter.name):
            continue
        for ip in adapter.ips:
            if ip.is_IPv4 and isinstance(ip.ip, str):
                addr = ipaddress.IPv4Address(ip.ip)
                if not (addr.is_unspecified or addr.is_multicast):
                    candidates.append(addr)
    if not candidates:
        return None
    return str(min(candidates, key=lambda a: (a.is_loopback, a.is_link_local)))


def outward_address() -> str:
    """This host's address as seen from the network, found without sending any traffic.

    The source address of the default route if there is one; otherwise an address of an interface that is
    up (a network with no gateway, or a namespace with only loopback); finally 127.0.0.1.
    """
    return _routed_address() or _interface_address() or _LOOPBACK


def reachable_address(bind_host: str | None, zeroconf_host: str | None) -> str:
    """The address to advertise for a server bound to bind_host.

    An explicit zeroconf_host (`--zeroconf-host`) always wins; a specific bound address is advertised as
    is; a wildcard bind (None, "", 0.0.0.0, ::) advertises `outward_address()`. Host names are resolved.
    """
    if zeroconf_host is not None and zeroconf_host.strip():
        if _is_wildcard(zeroconf_host):
            raise ValueError(f"zeroconf host {zeroconf_host!r} is not an address clients can reach")
        return _resolve(zeroconf_host)
    if not _is_wildcard(bind_host):
        assert bind_host is not None
        address = _resolve(bind_host)
        if not _is_wildcard(address):
            return address
    return outward_address()


def _dns_label(text: str) -> str:
    """text reduced to a valid DNS label (lowercase letters, digits and hyphens)."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63].rstrip("-")


def server_name(name: str) -> str:
    """The host name announced with the service: `<hostname>-<name>.local.`.

    Deliberately not plain `<hostname>.local.`: that name belongs to the OS's own responder (avahi), and
    announcing it with a different address set (--zeroconf-host, a multi-homed host) makes avahi see a
    conflict and rename the host.
    """
    host = _dns_label(socket.gethostname().split(".", 1)[0]) or "wyoming"
    return f"{_dns_label(f'{host}-{name}') or host}.local."


class Advertisement:
    """A registered `_wyoming._tcp` service; `close()` withdraws it."""

    def __init__(self, aiozc: AsyncZeroconf, info: AsyncServiceInfo, announce: asyncio.Future) -> None:
        self._aiozc = aiozc
        self._info = info
        self._announce = announce
        # Retrieve the outcome so a failed background announcement is not reported as never retrieved.
        announce.add_done_callback(lambda fut: fut.cancelled() or fut.exception())
        self._closed = False

    @property
    def name(self) -> str:
        """Full service name; zeroconf appends " (2)" etc. if the instance name was taken."""
        return self._info.name

    @property
    def address(self) -> str:
        """The advertised address."""
        return self._info.parsed_addresses()[0]

    @property
    def port(self) -> int:
        """The advertised port."""
        assert self._info.port is not None
        return self._info.port

    @property
    def server(self) -> str:
        """The advertised host name."""
        return str(self._info.server)

    async def close(self) -> None:
        """Send goodbye packets and shut zeroconf down; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if not self._announce.done():
            self._announce.cancel()
        try:
            goodbye = await self._aiozc.async_unregister_service(self._info)
            await goodbye
        finally:
            await self._aiozc.async_close()
        _LOGGER.debug("Zeroconf advertisement %s withdrawn", self.name)

    async def __aenter__(self) -> Advertisement:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def advertise(
    name: str,
    port: int,
    host: str | None = None,
    zeroconf_host: str | None = None,
    *,
    interfaces: InterfaceChoice | Sequence[str | int] = InterfaceChoice.All,
) -> Advertisement:
    """Advertise `name._wyoming._tcp.local.` at port on the address chosen by `reachable_address()`.

    host is the address the server is bound to, zeroconf_host the `--zeroconf-host` override. Returns once
    the name has been probed (about a second); the announcements continue in the background. If another
    server already uses the name, zeroconf picks a free one (see `Advertisement.name`).
    """
    if not name or not name.strip():
        raise ValueError("zeroconf service name must not be empty")
    if not 0 < port < 65536:
        raise ValueError(f"invalid port to advertise: {port}")
    address = await asyncio.to_thread(reachable_address, host, zeroconf_host)
    parsed = _parse_ip(address)
    if parsed is not None and parsed.is_loopback:
        _LOGGER.warning("Advertising loopback address %s: only clients on this host can connect", address)

    info = AsyncServiceInfo(
        SERVICE_TYPE,
        f"{name.strip()}.{SERVICE_TYPE}",
        port=port,
        parsed_addresses=[address],
        server=server_name(name),
    )
    aiozc = AsyncZeroconf(interfaces=interfaces)
    try:
        announce = await aiozc.async_register_service(info, allow_name_change=True)
    except BaseException:
        with contextlib.suppress(Exception):
            await aiozc.async_close()
        raise
    _LOGGER.info("Zeroconf: advertising %s at %s:%s", info.name, address, port)
    return Advertisement(aiozc, info, asyncio.ensure_future(announce))

"""Advertise and browse `_wyoming._tcp` inside a private network namespace; print the result as JSON.

Run by tests/test_discovery.py as `unshare --net python netns_zeroconf_probe.py`. It refuses to run where
any interface other than loopback exists, so its mDNS packets can never leave the namespace. It brings
loopback up with an ioctl (no iproute2 needed), advertises as the server would when bound to 0.0.0.0
without --zeroconf-host, finds and resolves the service with a separate zeroconf instance (so the answer
really crosses the network stack), then closes the advertisement and waits for the goodbye to arrive.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import socket
import struct
import sys
import time

from zeroconf import ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from wyoming_qwen3tts.wyoming.discovery import SERVICE_TYPE, advertise, reachable_address

NAME = "qwen3-tts-netns-test"
PORT = 10299
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = "16sh22x"  # struct ifreq: name, then the flags member of the 24-byte union


def bring_loopback_up() -> None:
    """Set IFF_UP on lo, as `ip link set lo up` does."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack(_IFREQ, b"lo", 0)
        flags = struct.unpack(_IFREQ, fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | _IFF_UP))


async def main() -> dict:
    """Advertise, browse, resolve, withdraw; return what was seen."""
    start = time.monotonic()
    result: dict = {"reachable_address": reachable_address("0.0.0.0", None)}
    added: asyncio.Queue[str] = asyncio.Queue()
    removed = asyncio.Event()

    def on_change(zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Added:
            added.put_nowait(name)
        elif state_change is ServiceStateChange.Removed:
            removed.set()

    ad = await advertise(NAME, PORT, host="0.0.0.0")
    result.update(advertised_name=ad.name, advertised_address=ad.address, server=ad.server)
    browser_zc = AsyncZeroconf()
    browser = AsyncServiceBrowser(browser_zc.zeroconf, SERVICE_TYPE, handlers=[on_change])
    try:
        found = await asyncio.wait_for(added.get(), 5)
        info = AsyncServiceInfo(SERVICE_TYPE, found)
        resolved = await info.async_request(browser_zc.zeroconf, 3000)
        result.update(
            found=found,
            resolved=resolved,
            port=info.port,
            addresses=info.parsed_addresses(),
            server_seen=info.server,
        )
        result["found_after_s"] = round(time.monotonic() - start, 2)
        await ad.close()
        try:
            await asyncio.wait_for(removed.wait(), 5)
            result["removed"] = True
        except TimeoutError:
            result["removed"] = False
    finally:
        await ad.close()
        await browser.async_cancel()
        await browser_zc.async_close()
    result["elapsed_s"] = round(time.monotonic() - start, 2)
    return result


if __name__ == "__main__":
    others = [name for _, name in socket.if_nameindex() if name != "lo"]
    if others:
        sys.exit(f"refusing to run outside a loopback-only network namespace (interfaces: {others})")
    bring_loopback_up()
    print(json.dumps(asyncio.run(main())))

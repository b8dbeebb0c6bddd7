"""Start the real server with --zeroconf inside a loopback-only network namespace, find it by mDNS as Home
Assistant would, and ask the address it advertises for `describe`. Prints the result as JSON.

Run by tests/test_discovery.py as `unshare --net python netns_server_probe.py MODEL_DIR`.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys

from netns_zeroconf_probe import bring_loopback_up
from wyoming.client import AsyncTcpClient
from wyoming.info import Describe, Info
from zeroconf import ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

SERVICE_TYPE = "_wyoming._tcp.local."
PORT = 10301


async def find_and_describe() -> dict:
    found: asyncio.Queue[str] = asyncio.Queue()

    def on_change(zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Added:
            found.put_nowait(name)

    zc = AsyncZeroconf()
    browser = AsyncServiceBrowser(zc.zeroconf, SERVICE_TYPE, handlers=[on_change])
    try:
        name = await asyncio.wait_for(found.get(), 90)
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        await info.async_request(zc.zeroconf, 3000)
        address = info.parsed_addresses()[0]
        async with AsyncTcpClient(address, info.port) as client:
            await client.write_event(Describe().event())
            while True:
                event = await asyncio.wait_for(client.read_event(), 10)
                if event is not None and Info.is_type(event.type):
                    break
        program = Info.from_event(event).tts[0]
        return {"name": name, "address": address, "port": info.port, "voices": len(program.voices)}
    finally:
        await browser.async_cancel()
        await zc.async_close()


if __name__ == "__main__":
    others = [name for _, name in socket.if_nameindex() if name != "lo"]
    if others:
        sys.exit(f"refusing to run outside a loopback-only network namespace (interfaces: {others})")
    bring_loopback_up()
    server = subprocess.Popen(
        [sys.executable, "-m", "wyoming_qwen3tts", "--model", sys.argv[1], "--uri", f"tcp://0.0.0.0:{PORT}"]
        + ["--zeroconf", "kitchen", "--no-warmup", "--threads", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        print(json.dumps(asyncio.run(find_and_describe())))
    finally:
        server.terminate()
        server.wait(20)

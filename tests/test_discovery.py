"""wyoming/discovery.py: the advertised address, and a real advertise/browse round trip.

The round trip runs in a private network namespace holding only loopback (`unshare --net`), so no mDNS
packet reaches a real network.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wyoming_qwen3tts.wyoming import discovery
from wyoming_qwen3tts.wyoming.discovery import reachable_address, server_name

REPO = Path(__file__).resolve().parent.parent
PROBE = Path(__file__).resolve().parent / "netns_zeroconf_probe.py"


@pytest.mark.parametrize("bind_host", ["0.0.0.0", "::", "", None])
def test_wildcard_bind_uses_zeroconf_host(bind_host: str | None) -> None:
    assert reachable_address(bind_host, "192.168.1.50") == "192.168.1.50"


def test_specific_ip_is_advertised_as_is() -> None:
    assert reachable_address("10.1.2.3", None) == "10.1.2.3"
    assert reachable_address("::1", None) == "::1"
    assert reachable_address("fe80::1%eth0", None) == "fe80::1"


def test_zeroconf_host_overrides_specific_bind() -> None:
    assert reachable_address("10.1.2.3", "192.168.1.50") == "192.168.1.50"


@pytest.mark.parametrize("bind_host", ["0.0.0.0", "::", None])
def test_wildcard_bind_without_host_gives_usable_ip(bind_host: str | None) -> None:
    address = ipaddress.ip_address(reachable_address(bind_host, None))
    assert not address.is_unspecified
    assert not address.is_multicast


def test_host_names_are_resolved() -> None:
    assert reachable_address("localhost", None) == "127.0.0.1"


@pytest.mark.parametrize("zeroconf_host", ["0.0.0.0", "::"])
def test_wildcard_zeroconf_host_is_rejected(zeroconf_host: str) -> None:
    with pytest.raises(ValueError):
        reachable_address("0.0.0.0", zeroconf_host)


def test_fallback_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discovery, "_routed_address", lambda: None)
    monkeypatch.setattr(discovery, "_interface_address", lambda: "169.254.7.7")
    assert reachable_address("0.0.0.0", None) == "169.254.7.7"
    monkeypatch.setattr(discovery, "_interface_address", lambda: None)
    assert reachable_address("0.0.0.0", None) == "127.0.0.1"


def test_server_name_is_a_local_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discovery.socket, "gethostname", lambda: "My_Box.lan")
    assert server_name("qwen3-tts") == "my-box-qwen3-tts.local."


async def test_advertise_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        await discovery.advertise("", 10200)
    with pytest.raises(ValueError):
        await discovery.advertise("qwen3-tts", 0)


def _netns_prefix() -> list[str]:
    """The unshare command line that gives a private network namespace, or skip saying why there is none."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed: cannot create a private network namespace")
    errors = []
    for prefix in (["unshare", "--net"], ["unshare", "--user", "--map-root-user", "--net"]):
        proc = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=10)
        if proc.returncode == 0:
            return prefix
        errors.append(f"{' '.join(prefix)}: {proc.stderr.strip()}")
    pytest.skip(
        "cannot create a private network namespace (needs root or user namespaces): " + "; ".join(errors)
    )


def test_advertise_and_browse_in_loopback_only_namespace() -> None:
    prefix = _netns_prefix()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    start = time.monotonic()
    proc = subprocess.run(
        [*prefix, sys.executable, str(PROBE)], capture_output=True, text=True, timeout=20, env=env, cwd=REPO
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])

    # No route and only loopback: the wildcard bind must fall back to 127.0.0.1, the one usable address.
    assert result["reachable_address"] == "127.0.0.1"
    assert result["found"] == "qwen3-tts-netns-test._wyoming._tcp.local."
    assert result["resolved"] is True
    assert result["port"] == 10299
    assert result["addresses"] == ["127.0.0.1"]
    assert result["server_seen"] == result["server"]
    assert result["removed"] is True, "the goodbye sent by close() did not reach the browser"
    assert elapsed < 20


def test_real_server_is_found_and_answers_at_the_advertised_address(tiny_models) -> None:
    prefix = _netns_prefix()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH")])
        ),
    }
    probe = REPO / "tests" / "netns_server_probe.py"
    proc = subprocess.run(
        [*prefix, sys.executable, str(probe), str(tiny_models["custom_voice"])],
        capture_output=True,
        text=True,
        timeout=150,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["name"] == "kitchen._wyoming._tcp.local."
    assert result["address"] == "127.0.0.1" and result["port"] == 10301
    assert result["voices"] == 9

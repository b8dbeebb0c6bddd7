"""The voice studio of the page at / in headless Chromium, against the real server: the tiny Base model, a
voices directory in tmp_path and --http-api-key (so the studio may write).

One clip goes the whole way, through a small reverse proxy that serves the server under /prefix/ as Home
Assistant's ingress does (from an address the server trusts, so the page asks for no key): uploaded (the
test's stand-in for recording), trimmed where the server suggests, previewed, saved, seen on the page and
in a Wyoming `describe`, renamed and deleted; no request may leave the prefix. Another test leaves the key
out, then gets it wrong; a third opens the page of a server without a key, where saving is off. Skipped,
saying why, without Debian's chromium and chromedriver (test_http_page.py's `browser` and skip mark).
"""

from __future__ import annotations

import asyncio
import http.client
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import test_http_page
from conftest import QUICK, ServerProcess, free_port
from test_http_api import API_KEY, HttpServer
from test_server import describe

PREFIX = "/prefix"
INGRESS = "127.0.0.2"  # the proxy's address towards the server, which trusts it (--http-trusted-peer)
RATE = 24000
CLIP_SECONDS = 6.0
WAIT = 60  # seconds for one step of the page (a preview synthesizes on 2 shared cores)

pytestmark = test_http_page.pytestmark  # skipped, saying why, without chromium and chromedriver
browser = test_http_page.browser  # the fixture: headless chromium through chromedriver


def write_clip(path: Path, seconds: float) -> None:
    """Something like speech: a voiced tone with syllable-rate swells, after half a second of near-silence."""
    t = np.arange(int(seconds * RATE)) / RATE
    rng = np.random.default_rng(7)
    voice = 0.3 * np.sin(2 * np.pi * 160 * t) * (1 + 0.6 * np.sin(2 * np.pi * 3.5 * t))
    voice += 0.1 * np.sin(2 * np.pi * 320 * t) + 0.01 * rng.standard_normal(t.size)
    voice[t < 0.5] *= 0.02
    sf.write(path, voice.astype(np.float32), RATE)


@dataclass
class Servers:
    studio: HttpServer  # with --http-api-key: saving is on
    open: HttpServer  # without: the API is open, and saving is off


@pytest.fixture(scope="module")
def servers(tiny_models, tmp_path_factory) -> Iterator[Servers]:
    """Both servers on the tiny Base model, started side by side (most of a start is Python's imports)."""
    started = []
    try:
        for name, extra in (
            ("studio", ["--http-api-key", API_KEY, "--http-trusted-peer", INGRESS]),
            ("open", []),
        ):
            voices = tmp_path_factory.mktemp(f"{name}-voices")
            write_clip(voices / "anna.wav", 1.5)  # a Base model starts with at least one voice
            (voices / "anna.txt").write_text("Hello, this is my voice.\n", encoding="utf-8")
            port = free_port()
            data = tmp_path_factory.mktemp(f"{name}-data")  # the clone-prompt cache, not ./data
            args = ["--model", str(tiny_models["base"]), "--voices-dir", str(voices), "--data-dir", str(data)]
            args += ["--voices-reload-interval", "0"]  # the studio reloads the voices it changes
            process = ServerProcess([*args, "--http-uri", f"tcp://127.0.0.1:{port}", *extra, *QUICK])
            started.append(HttpServer(process, f"http://127.0.0.1:{port}"))
        for server in started:
            server.process.wait_ready()
            eventually(lambda server=server: server.request("/health")[0] == 200, what="a healthy HTTP API")
        yield Servers(*started)
    finally:
        for server in started:
            server.process.process.terminate()  # both at once: each takes a few seconds to stop
        for server in started:
            server.process.stop()


@pytest.fixture
def studio(servers) -> HttpServer:
    return servers.studio


class PrefixProxy:
    """Forwards PREFIX/* to the server with the prefix cut off, from INGRESS, as Home Assistant's ingress
    does (whole bodies, not streamed: enough here); remembers every request outside the prefix."""

    def __init__(self, port: int) -> None:
        self.outside: list[str] = []
        self.forwarded: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.partition("?")[0] != PREFIX and not self.path.startswith(PREFIX + "/"):
                    proxy.outside.append(f"{self.command} {self.path}")
                    self.send_error(404, "outside the prefix")
                    return
                path = self.path.removeprefix(PREFIX)
                path = path if path.startswith("/") else "/" + path
                skip = {"host", "connection", "keep-alive", "content-length"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                upstream = http.client.HTTPConnection(
                    "127.0.0.1", port, timeout=WAIT, source_address=(INGRESS, 0)
                )
                try:
                    upstream.request(self.command, path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                finally:
                    upstream.close()
                proxy.forwarded.append(f"{self.command} {path.partition('?')[0]} {response.status}")
                self.send_response(response.status)
                skip = {"transfer-encoding", "connection", "content-length", "date", "server"}
                for name, value in response.getheaders():
                    if name.lower() not in skip:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(studio) -> Iterator[PrefixProxy]:
    running = PrefixProxy(int(studio.base_url.rsplit(":", 1)[1]))
    yield running
    running.close()


def eventually(check: Callable[[], object], timeout: float = WAIT, what: str = "") -> object:
    """check()'s first truthy result, polled; fails naming `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        time.sleep(0.2)
    return result


def wyoming_voices(server: HttpServer) -> set[str]:
    return {voice.name for voice in asyncio.run(describe(server.process.uri)).tts[0].voices}


def by_id(browser, element_id: str):
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, element_id)


def saved_item(browser, name: str):
    from selenium.webdriver.common.by import By

    found = browser.find_elements(By.CSS_SELECTOR, f'#saved li[data-voice="{name}"]')
    return found[0] if found else None


def enter_key(browser, key: str) -> None:
    field = by_id(browser, "key")
    field.clear()
    field.send_keys(key)
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", field)


def test_the_page_uses_only_relative_urls():
    page = resources.files("wyoming_qwen3tts.http").joinpath("page.html").read_text(encoding="utf-8")
    assert not re.search(r"""["'`(]\s*/(v1|health|docs)""", page)
    assert not re.search(r"""(src|href|action)\s*=\s*["']/""", page)


def test_a_clip_becomes_a_voice_then_is_renamed_and_deleted_under_a_prefix(studio, proxy, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready

    clip = tmp_path / "kitchen-clip.wav"
    write_clip(clip, CLIP_SECONDS)
    browser.get(proxy.url + PREFIX)  # no key: the server trusts the ingress proxy
    assert browser.current_url == proxy.url + PREFIX + "/"  # the page adds the slash its URLs need
    eventually(lambda: "voices ready" in by_id(browser, "status").text, what="the voice list")
    eventually(lambda: by_id(browser, "clone").is_displayed(), what="the clone form")
    assert by_id(browser, "studio-error").text == ""
    assert by_id(browser, "save").is_enabled()

    # Upload (instead of recording): the server's suggested window appears, 3 to 15 s within the clip.
    by_id(browser, "clip-file").send_keys(str(clip))
    eventually(lambda: by_id(browser, "trim").is_displayed(), what="the trim controls")
    start = float(by_id(browser, "clip-start").get_attribute("value"))
    end = float(by_id(browser, "clip-end").get_attribute("value"))
    assert 0 < start < end <= CLIP_SECONDS + 0.05 and 3 <= end - start <= 15, (start, end)  # quiet start cut
    assert "The trimmed part" in by_id(browser, "trim-info").text
    assert "kitchen-clip.wav: 6.0 s" in by_id(browser, "clip-info").text
    play = by_id(browser, "play-trim")
    play.click()  # the trimmed part plays, decoded in the browser
    assert play.text == "Stop"
    play.click()
    assert play.text == "Play the trimmed part"

    # Preview: the player gets the server's WAV as a blob and can play it.
    by_id(browser, "transcript").send_keys("The kitchen lights are on and the door is locked.")
    by_id(browser, "preview").click()
    eventually(
        lambda: browser.execute_script(
            "const a = document.getElementById('studio-audio');"
            "return a.src.startsWith('blob:') && a.readyState >= 1 && a.duration > 0;"
        ),
        what="the preview to load",
    )
    assert by_id(browser, "studio-error").text == ""

    # Save: on the page, and over Wyoming.
    by_id(browser, "studio-name").send_keys("kitchen")
    by_id(browser, "studio-description").send_keys("Made in the studio")
    by_id(browser, "save").click()
    item = eventually(lambda: saved_item(browser, "kitchen"), what="kitchen in the saved list")
    assert "Made in the studio" in item.text
    assert "Saved kitchen" in by_id(browser, "studio-status").text
    assert "kitchen" in [
        o.get_attribute("value") for o in by_id(browser, "voice").find_elements(By.TAG_NAME, "option")
    ]
    eventually(lambda: "kitchen" in wyoming_voices(studio), what="kitchen in describe")

    # Saving the same name again is refused in plain words.
    by_id(browser, "studio-name").send_keys("kitchen")
    by_id(browser, "save").click()
    eventually(lambda: "choose another name" in by_id(browser, "studio-error").text, what="the 409 line")

    # Rename through the page.
    item.find_element(By.CSS_SELECTOR, 'button[data-act="rename"]').click()
    new_name = saved_item(browser, "kitchen").find_element(By.CSS_SELECTOR, ".rename input")
    new_name.clear()
    new_name.send_keys("porch")
    saved_item(browser, "kitchen").find_element(By.CSS_SELECTOR, 'button[data-act="save-rename"]').click()
    eventually(lambda: saved_item(browser, "porch") and not saved_item(browser, "kitchen"), what="the rename")
    assert "Renamed kitchen to porch" in by_id(browser, "studio-status").text
    eventually(lambda: {"porch"} <= wyoming_voices(studio) - {"kitchen"}, what="porch in describe")

    # Delete through the page (it asks first).
    saved_item(browser, "porch").find_element(By.CSS_SELECTOR, 'button[data-act="delete"]').click()
    eventually(lambda: ready.alert_is_present()(browser), timeout=10, what="the confirmation")
    browser.switch_to.alert.accept()
    eventually(lambda: not saved_item(browser, "porch"), what="porch gone from the page")
    eventually(lambda: "porch" not in wyoming_voices(studio), what="porch gone from describe")
    assert "Deleted porch" in by_id(browser, "studio-status").text

    assert proxy.outside == []
    routes = {line.rsplit(" ", 1)[0] for line in proxy.forwarded}
    for route in ("GET /v1/studio", "POST /v1/voices/clip", "POST /v1/voices/preview", "POST /v1/voices"):
        assert route in routes, proxy.forwarded
    assert {"PATCH /v1/voices/kitchen", "DELETE /v1/voices/porch"} <= routes


def test_a_missing_or_wrong_key_is_said_and_a_right_one_kept_for_the_session(studio, browser):
    browser.get(studio.base_url + "/")
    error = eventually(lambda: by_id(browser, "studio-error").text, what="the error line")
    assert "API key" in error and "field at the top" in error, error
    assert not by_id(browser, "save").is_enabled()

    browser.execute_script("document.getElementById('studio-error').textContent = ''")
    enter_key(browser, "not-the-key")
    error = eventually(lambda: by_id(browser, "studio-error").text, what="the error line again")
    assert "API key" in error, error
    assert by_id(browser, "key").get_attribute("aria-invalid") == "true"

    enter_key(browser, API_KEY)
    eventually(lambda: "voices ready" in by_id(browser, "status").text, what="the voice list")
    # The studio's own load (v1/studio) enables saving; it may answer after the voice list.
    eventually(lambda: by_id(browser, "save").is_enabled(), what="the save button enabled")
    assert by_id(browser, "studio-error").text == ""

    browser.refresh()  # the key stays for the tab's session
    eventually(lambda: "voices ready" in by_id(browser, "status").text, what="the voice list after reload")
    assert by_id(browser, "key").get_attribute("value") == API_KEY


def test_with_writes_off_the_page_says_why_and_offers_no_save(servers, browser):
    browser.get(servers.open.base_url + "/")
    eventually(lambda: by_id(browser, "why").is_displayed(), what="the reason writes are off")
    assert "--http-api-key" in by_id(browser, "why").text
    assert not by_id(browser, "save").is_enabled()
    assert by_id(browser, "clone").is_displayed() and by_id(browser, "preview").is_enabled()
    assert by_id(browser, "studio-error").text == ""

"""The server's stop signals (wyoming/server.py stop_signals): SIGTERM to the process stops it; SIGTERM to a
child it forked without exec (OpenVINO forks dozens while it converts and compiles, and signals some) does
not. The server's own drain on SIGTERM is tested end to end in test_server_limits.py."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from wyoming_qwen3tts.wyoming.server import stop_signals


def test_a_forked_childs_sigterm_does_not_stop_the_server_and_one_to_it_does():
    async def scenario() -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        # As the loop's own handlers are set up: a wakeup socket the child inherits (asyncio sets it for
        # any handler, e.g. wyoming's SIGTERM one, which stop_signals replaces).
        loop.add_signal_handler(signal.SIGTERM, lambda: None)
        stopping = stop_signals()
        child = os.fork()
        if child == 0:  # a child that gets SIGTERM before it exits, without exec
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            os._exit(0)
        os.waitpid(child, 0)
        await asyncio.sleep(0.3)
        after_child = stopping.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stopping.wait(), 5)
        return after_child, stopping.is_set()

    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        after_child, after_own = asyncio.run(scenario())
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    assert not after_child  # before the fix, the child's SIGTERM reached the loop and set it
    assert after_own

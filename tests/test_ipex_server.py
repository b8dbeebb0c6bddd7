"""End to end with --backend ipex: test_server.py's describe, one-shot and streaming tests, in .venv-ipex.

The tests are test_server.py's own; this module only points its servers at the ipex backend. Skipped
where IPEX cannot run (script/setup --ipex builds the environment, script/test-ipex runs this).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from test_server import (  # noqa: F401  (collected here, run on the fixtures below)
    test_describe_lists_the_preset_voices,
    test_home_assistant_streaming_order_speaks_each_sentence_once,
    test_one_shot_synthesis_streams_chunks,
    test_voice_design_model_speaks_its_default_voice,
)

from wyoming_qwen3tts.engine.pytorch.options import ipex_problem

NO_IPEX = ipex_problem()
pytestmark = pytest.mark.skipif(NO_IPEX is not None, reason=f"no IPEX here: {NO_IPEX}")


@pytest.fixture(scope="module")
def backend() -> str:
    return "ipex"


@pytest.fixture(scope="module")
def model_args(tiny_models) -> Callable[[str], list[str]]:
    """The servers of the imported tests (conftest's custom_voice_server too) run on the ipex backend."""
    return lambda kind: ["--model", str(tiny_models[kind]), "--backend", "ipex"]

"""qwen-tts's own prompt, taken from inside its generate_* calls: the reference the engine is tested against.

qwen-tts builds the talker's prompt inline in Qwen3TTSForConditionalGeneration.generate
and then calls self.talker.generate(...); `capture_prompt` shadows that method for the
length of one call and keeps the embeddings it was handed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from wyoming_qwen3tts.engine.loop import SamplingOptions, TalkerPrompt


class _PromptCaptured(Exception):
    def __init__(self, kwargs: dict[str, Any]) -> None:
        super().__init__("prompt captured")
        self.kwargs = kwargs


_CAPTURE_LOCK = threading.Lock()


def capture_prompt(model: Any, call: Callable[[], Any]) -> TalkerPrompt:
    """Run a qwen-tts generate_* call until it hands the talker its prompt, and return that prompt.

    qwen-tts builds the prompt inline in Qwen3TTSForConditionalGeneration.generate
    and then calls self.talker.generate(...); an instance attribute shadows that
    method for the length of the call, so nothing is generated twice.
    """

    def intercept(**kwargs: Any) -> Any:
        raise _PromptCaptured(kwargs)

    talker = model.talker
    with _CAPTURE_LOCK:
        talker.generate = intercept
        try:
            call()
        except _PromptCaptured as captured:
            kwargs = captured.kwargs
        else:
            raise RuntimeError("qwen-tts did not reach the talker; is qwen-tts 0.1.1 installed?")
        finally:
            del talker.generate
    embeds = kwargs["inputs_embeds"]
    if embeds.shape[0] != 1:
        raise ValueError("one utterance at a time")
    return TalkerPrompt(
        embeds=embeds,
        trailing_text=kwargs["trailing_text_hidden"],
        pad_embed=kwargs["tts_pad_embed"],
        sampling=SamplingOptions.from_generate_kwargs(kwargs),
    )

"""The interface every backend implements, and the values that cross it.

The handler knows only this module: it asks an engine for its voices and for
the PCM chunks of one piece of text. How a step runs (PyTorch, IPEX, OpenVINO)
stays behind it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

SAMPLE_RATE = 24000  # every 12 Hz Qwen3-TTS codec decodes to 24 kHz
SAMPLE_WIDTH = 2  # 16-bit PCM
CHANNELS = 1


class EngineError(Exception):
    """A request the engine cannot serve; the message is shown to the client."""

    def __init__(self, message: str, code: str = "synthesis-failed") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Voice:
    """One voice a client can ask for by name.

    kind is "preset" (a CustomVoice speaker), "clone" (a Base model prompt built
    from reference audio) or "design" (a VoiceDesign instruction).
    languages holds the model's language names ("english"); an empty tuple means
    the voice speaks every language the model knows.
    """

    name: str
    kind: str
    description: str = ""
    languages: tuple[str, ...] = ()
    speaker: str | None = None
    instruct: str | None = None
    clone_prompt: Any = field(default=None, compare=False, repr=False)


class Engine(ABC):
    """A loaded Qwen3-TTS model that turns text into 16-bit mono PCM at 24 kHz."""

    sample_rate = SAMPLE_RATE
    sample_width = SAMPLE_WIDTH
    channels = CHANNELS

    @property
    @abstractmethod
    def model_kind(self) -> str:
        """The checkpoint kind: "custom_voice", "base" or "voice_design"."""

    @abstractmethod
    def languages(self) -> Sequence[str]:
        """Model language names this model speaks (without "auto")."""

    @abstractmethod
    def voices(self) -> Sequence[Voice]:
        """The voices a client may ask for, default first."""

    def reload_voices(self) -> bool:
        """Pick up changes to the voices directory; True if the voices were rebuilt.

        Blocking, and it may run the model (a new clone prompt): callers run it
        where synthesis runs, on the inference thread. An engine without a voices
        directory has nothing to reload.
        """
        return False

    def follows_instructions(self, voice: Voice) -> bool:
        """True if a request's style instruction changes how this voice speaks."""
        return False

    def clone_voice(self, audio: bytes, transcript: str | None) -> Voice:
        """A voice cloned from reference audio (any format librosa reads) for one request.

        transcript None clones from the speaker embedding alone. Blocking (it runs
        the encoders): callers run it on the inference thread.
        """
        raise EngineError(
            f"a {self.model_kind} model cannot clone voices; serve a Base model", "cannot-clone"
        )

    @abstractmethod
    def synthesize(self, text: str, voice: Voice, language: str) -> Iterator[bytes]:
        """Yield 16-bit PCM chunks for text as soon as each exists.

        language is a model language name or "auto". Blocking: callers run it
        off the event loop. Raises EngineError for a request it cannot serve.
        """

    def warmup(self) -> None:
        """Run one short synthesis so the first real request is not the slow one."""
        voice = self.voices()[0]
        for _ in self.synthesize("Hello.", voice, "auto"):
            pass

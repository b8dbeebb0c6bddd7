"""The answer to describe: this program and every voice with the languages it speaks (BCP-47 codes).

Home Assistant lists these voices and sends back a voice's name and, where it has one, its speaker.
"""

from __future__ import annotations

from wyoming.info import Attribution, Info, TtsProgram, TtsVoice, TtsVoiceSpeaker

from ..languages import bcp47_codes
from ..service import SpeechService
from ..voices.voice import Voice

ATTRIBUTION = Attribution(
    name="Qwen team, Alibaba Cloud (Qwen3-TTS)", url="https://github.com/QwenLM/Qwen3-TTS"
)
PROGRAM_DESCRIPTION = "Qwen3-TTS text to speech on the CPU"


def describe(service: SpeechService, program_name: str, version: str) -> Info:
    """The Info event of this server."""
    voices = [
        TtsVoice(
            name=voice.name,
            description=voice.description or voice.name,
            attribution=ATTRIBUTION,
            installed=True,
            version=None,
            languages=bcp47_codes(service.voice_languages(voice)),
            speakers=_speakers(voice),
        )
        for voice in service.voices()
    ]
    program = TtsProgram(
        name=program_name,
        description=PROGRAM_DESCRIPTION,
        attribution=ATTRIBUTION,
        installed=True,
        version=version,
        voices=voices,
        supports_synthesize_streaming=True,
    )
    return Info(tts=[program])


def _speakers(voice: Voice) -> list[TtsVoiceSpeaker] | None:
    # Every voice is one speaker; list it only when it has a name of its own a client could send.
    if voice.speaker and voice.speaker.casefold() != voice.name.casefold():
        return [TtsVoiceSpeaker(name=voice.speaker)]
    return None

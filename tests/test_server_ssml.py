"""SSML end to end: the real server on a tiny model speaks a document's text and fills its breaks."""

from __future__ import annotations

import numpy as np
from test_server import audio_of, is_audio_stop, send
from wyoming.error import Error
from wyoming.tts import Synthesize, SynthesizeVoice

RYAN = SynthesizeVoice(name="ryan")


async def test_ssml_break_is_silence_between_the_sentences_audio(custom_voice_server) -> None:
    uri = custom_voice_server.uri
    document = '<speak><s>Hello.</s><break time="500ms"/><s>Good <emphasis>bye</emphasis>.</s></speak>'

    ssml = audio_of(
        await send(
            uri, Synthesize(text=document, voice=RYAN, text_format="ssml").event(), until=is_audio_stop
        )
    )
    first = audio_of(await send(uri, Synthesize(text="Hello.", voice=RYAN).event(), until=is_audio_stop))
    second = audio_of(await send(uri, Synthesize(text="Good bye.", voice=RYAN).event(), until=is_audio_stop))

    assert len(first) and len(second)
    np.testing.assert_array_equal(ssml, np.concatenate([first, np.zeros(12000, "<i2"), second]))


async def test_malformed_ssml_is_an_error_event(custom_voice_server) -> None:
    events = await send(
        custom_voice_server.uri, Synthesize(text="<speak>Hi <b>there</speak>", text_format="ssml").event()
    )
    assert Error.is_type(events[-1].type)
    error = Error.from_event(events[-1])
    assert error.code == "invalid-ssml" and "line 1" in error.text

"""StreamingDecoder must give, chunk by chunk, the samples of decoding the whole utterance at once.

The codec decoder here is tiny (few channels, 2 transformer layers) but keeps what the streaming state
depends on: upsample rates [8, 5, 4, 3] and [2, 2], 16 codebooks of 2048 and a 72-frame sliding window.
Its weights are random and seeded; the codebooks, SnakeBeta parameters and layer scales are randomised
too (they start at zero or near it, which would decode to silence or hide the carried state).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import snr_db

from wyoming_qwen3tts.engine.codec import (
    BATCHED_HEAD_FRAMES,
    BATCHED_PASS_FRAMES,
    StreamingDecoder,
    TorchCodec,
    decode_together,
)
from wyoming_qwen3tts.engine.qwen_import import import_qwen_tts
from wyoming_qwen3tts.engine.seams import MAX_FRAMES_PER_PASS, CodecStep, DecoderState

FRAMES = 90  # longer than the 72-frame attention window and upstream's 25 frames of context
SAMPLES = 1920
CHUNKS = (1, 2, 3, 4, 7, 8, 5, 13, 20, 27)  # uneven; sums to FRAMES, crosses frame 72 mid-chunk


def random_decoder(kv_heads: int = 2, seed: int = 0) -> torch.nn.Module:
    """A tiny Qwen3TTSTokenizerV2Decoder with seeded random weights, scaled to stay well below clipping."""
    import_qwen_tts()
    from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import (
        Qwen3TTSTokenizerV2DecoderConfig,
    )
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Decoder

    config = Qwen3TTSTokenizerV2DecoderConfig(
        hidden_size=32,
        num_attention_heads=2,
        num_key_value_heads=kv_heads,
        head_dim=16,
        intermediate_size=64,
        num_hidden_layers=2,
        latent_dim=16,
        codebook_dim=16,
        decoder_dim=32,
    )
    torch.manual_seed(seed)
    decoder = Qwen3TTSTokenizerV2Decoder(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in decoder.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if name.endswith("cluster_usage"):
                param.fill_(1.0)
            elif name.endswith("embedding_sum"):
                param.copy_(noise)
            elif param.dim() >= 2:
                param.copy_(0.6 * noise / math.sqrt(param[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.1 * noise)
            else:  # biases, SnakeBeta alpha/beta (log scale), ConvNeXt gamma, layer scales
                param.copy_(0.1 * noise)
    return decoder


def random_codes(frames: int, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, 2048, (1, 16, frames), generator=torch.Generator().manual_seed(seed))


def whole(decoder: torch.nn.Module, codes: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return decoder(codes).reshape(-1).float()


def streamed(stream: StreamingDecoder, codes: torch.Tensor, chunks=CHUNKS) -> torch.Tensor:
    pieces, start = [], 0
    for size in chunks:
        piece = stream.decode(codes[..., start : start + size])
        assert piece.shape == (size * SAMPLES,)
        pieces.append(piece)
        start += size
    assert start == codes.shape[-1]
    return torch.cat(pieces)


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def decoder() -> torch.nn.Module:
    return random_decoder()


@pytest.fixture(scope="module")
def codes() -> torch.Tensor:
    return random_codes(FRAMES)


@pytest.fixture(scope="module")
def reference(decoder, codes) -> torch.Tensor:
    wav = whole(decoder, codes)
    assert wav.std() > 0.05 and (wav.abs() >= 1).float().mean() < 1e-3  # audible, not clipped
    return wav


def test_streamed_chunks_equal_whole_utterance(decoder, codes, reference):
    wav = streamed(StreamingDecoder(decoder), codes)
    assert wav.shape == (FRAMES * SAMPLES,) and wav.dtype == torch.float32
    assert snr_db(reference, wav) > 100  # float32 rounding only: about 130 dB
    assert (wav - reference).abs().max() < 1e-5


def test_no_discontinuity_at_joints(decoder, codes, reference):
    wav = streamed(StreamingDecoder(decoder), codes)
    joints = torch.tensor(CHUNKS[:-1]).cumsum(0) * SAMPLES
    around = torch.cat([joints - 1, joints])
    assert (wav[around] - reference[around]).abs().max() < 1e-5

    # The check has teeth: a chunk decoded without the carried state is wrong from its first sample on.
    fresh = StreamingDecoder(decoder).decode(codes[..., 10:20])
    assert (fresh[:SAMPLES] - reference[10 * SAMPLES : 11 * SAMPLES]).abs().max() > 1e-2


def test_snapshot_restore_continues_like_one_stream(decoder, codes, reference):
    prompt, rest = codes[..., :30], codes[..., 30:]
    stream = StreamingDecoder(decoder)
    stream.decode(prompt)  # a voice-clone reference: decoded once, its audio thrown away
    state = stream.snapshot()
    assert isinstance(state, DecoderState) and state.frames == 30

    first = streamed(stream, rest, (4, 8, 8, 40))
    stream.restore(state)
    assert torch.equal(streamed(stream, rest, (4, 8, 8, 40)), first)

    other = StreamingDecoder(decoder)  # another request on the same module, from the same state
    other.restore(state)
    from_other = streamed(other, rest, (2, 6, 52))
    tail = reference[30 * SAMPLES :]
    for wav in (first, from_other):
        assert (wav - tail).abs().max() < 1e-5


def test_copy_and_reset(decoder, codes):
    stream = StreamingDecoder(decoder)
    stream.decode(codes[..., :10])
    twin = stream.copy()
    a = stream.decode(codes[..., 10:20])
    b = twin.decode(codes[..., 10:20])  # the copy did not see what the original decoded since
    assert torch.equal(a, b)
    stream.reset()
    assert stream.frames == 0
    assert torch.equal(stream.decode(codes[..., :10]), StreamingDecoder(decoder).decode(codes[..., :10]))


def test_code_layouts_and_long_input(decoder, codes, reference):
    frames = MAX_FRAMES_PER_PASS + 7  # more than one internal pass
    as_frames = StreamingDecoder(decoder).decode(codes[0, :, :frames].t())  # [T, 16], as the talker emits
    as_batch = StreamingDecoder(decoder).decode(codes[..., :frames])
    assert torch.equal(as_frames, as_batch)
    assert (as_batch - reference[: frames * SAMPLES]).abs().max() < 1e-5
    assert StreamingDecoder(decoder).decode(codes[..., :0]).shape == (0,)
    with pytest.raises(ValueError):
        StreamingDecoder(decoder).decode(codes[:, :8])


def test_grouped_query_attention():
    decoder = random_decoder(kv_heads=1, seed=5)
    codes = random_codes(FRAMES, seed=6)
    assert snr_db(whole(decoder, codes), streamed(StreamingDecoder(decoder), codes)) > 100


def test_bfloat16(codes):
    half = random_decoder().to(torch.bfloat16)
    stream = StreamingDecoder(half)
    wav = streamed(stream, codes)
    assert all(t.dtype == torch.bfloat16 for t in stream.snapshot().convs + stream.snapshot().keys)
    assert wav.dtype == torch.float32
    # bfloat16 keeps 8 bits: different op orders round differently, so only close, not equal.
    assert snr_db(whole(half, codes), wav) > 30  # about 35 dB, as close as bf16 whole is to float32


# --- TorchCodec: the pure step under StreamingDecoder ------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 3, 8, 5, 11])
def test_torch_codec_chunks_equal_whole_utterance(decoder, codes, reference, chunk):
    step = TorchCodec(decoder)
    state, pieces = step.initial_state(), []
    for start in range(0, FRAMES, chunk):
        piece, state = step.decode(codes[..., start : start + chunk], state)
        pieces.append(piece)
    assert state.frames == FRAMES
    assert (torch.cat(pieces) - reference).abs().max() < 1e-5


def test_torch_codec_leaves_the_state_it_was_given(decoder, codes):
    step = TorchCodec(decoder)
    _, state = step.decode(codes[..., :75], step.initial_state())  # caches full, conv contexts set
    before = [t.clone() for t in state.tensors()]
    first, after = step.decode(codes[..., 75:83], state)
    assert after is not state and after.frames == 83 and state.frames == 75
    assert all(torch.equal(a, b) for a, b in zip(before, state.tensors(), strict=True))
    assert all(t.abs().sum() == 0 for t in step.initial_state().tensors())
    again, _ = step.decode(codes[..., 75:83], state)  # the same state decodes the same again
    assert torch.equal(first, again)


def test_copies_share_the_step_but_not_the_state(decoder, codes, reference):
    stream = StreamingDecoder(TorchCodec(decoder))
    stream.decode(codes[..., :20])
    twin = stream.copy()
    assert twin.step is stream.step
    # Interleaved: each stream continues from its own state only.
    a1 = stream.decode(codes[..., 20:23])
    b1 = twin.decode(codes[..., 20:21])
    a2 = stream.decode(codes[..., 23:31])
    b2 = twin.decode(codes[..., 21:31])
    assert (torch.cat([a1, a2]) - torch.cat([b1, b2])).abs().max() < 1e-5
    assert (torch.cat([a1, a2]) - reference[20 * SAMPLES : 31 * SAMPLES]).abs().max() < 1e-5
    assert stream.frames == twin.frames == 31


# --- Several streams decoded together (the chunks due at the same frame of a batch) -------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # the CPU kernels, the plain graph
def test_streams_decoded_together_give_what_each_gives_alone(codes, dtype):
    module = random_decoder().to(dtype)
    step = TorchCodec(module)
    assert step.graph._kernels == (dtype == torch.float32)
    passes: list[int] = []
    decode_rows = step.decode_rows
    step.decode_rows = lambda batch, states: passes.append(batch.shape[0]) or decode_rows(batch, states)

    # Streams at different places: new, 30 frames in, 75 in (past the 72-frame attention window).
    streams = [StreamingDecoder(step) for _ in range(4)]
    for stream, done in zip(streams, (0, 30, 75, 10), strict=True):
        stream.decode(codes[..., :done])
    alone = [stream.copy() for stream in streams]
    chunks = [codes[0, :, 3:5].t(), codes[0, :, 40:42].t(), codes[0, :, 80:82].t(), codes[0, :, 50:58].t()]
    together = decode_together(streams, chunks)
    assert passes == [3]  # the three 2-frame chunks in one pass; the 8-frame one alone
    tolerance = 1e-5 if dtype == torch.float32 else 0.02
    for got, stream, chunk in zip(together, alone, chunks, strict=True):
        expected = stream.decode(chunk)
        assert got.shape == expected.shape == (chunk.shape[0] * SAMPLES,)
        assert (got - expected).abs().max() < tolerance
    # Each stream's state went back to it: the next chunk continues each one's own utterance.
    nxt = codes[..., 60:62]
    for stream, twin, frames in zip(streams, alone, (2, 32, 77, 18), strict=True):
        assert stream.frames == twin.frames == frames
        assert (stream.decode(nxt) - twin.decode(nxt)).abs().max() < tolerance
    # The check has teeth: a stream given another's state continues that one's utterance, not its own.
    assert (streams[0].decode(nxt) - alone[1].decode(nxt)).abs().max() > 1e-2


def test_decode_together_of_long_chunks_and_backends_that_decode_one_row(decoder, codes):
    class OneRow(CodecStep):  # a backend without its own decode_rows (as the OpenVINO codec)
        def __init__(self) -> None:
            self.inner = TorchCodec(decoder)
            self.num_quantizers, self.samples_per_frame = 16, SAMPLES

        def initial_state(self) -> DecoderState:
            return self.inner.initial_state()

        def decode(self, chunk, state):
            return self.inner.decode(chunk, state)

    step = OneRow()
    passes: list[int] = []
    step.decode_rows = lambda batch, states: (
        passes.append(batch.shape[0]) or CodecStep.decode_rows(step, batch, states)
    )
    long = MAX_FRAMES_PER_PASS + 3
    chunks = [codes[0, :, :2].t(), codes[0, :, 5:7].t(), codes[0, :, :long].t()]
    together = decode_together([StreamingDecoder(step) for _ in chunks], chunks)
    for got, chunk in zip(together, chunks, strict=True):
        assert torch.equal(got, StreamingDecoder(step).decode(chunk))
    assert passes == [2]  # the two 2-frame chunks; the long one in passes of its own
    # A pass takes at most BATCHED_HEAD_FRAMES frames of all its rows: 3-frame chunks ten to a pass.
    passes.clear()
    decode_together([StreamingDecoder(step) for _ in range(11)], [codes[0, :, :3].t()] * 11)
    assert BATCHED_HEAD_FRAMES == 32 and passes == [10]  # and the eleventh alone
    # A step that decodes at most 4 frames a call (the OpenVINO codec) gets no longer chunks in a batch.
    passes.clear()
    step.max_frames_per_pass = 4
    chunks = [codes[0, :, :8].t(), codes[0, :, 8:16].t(), codes[0, :, :4].t(), codes[0, :, 4:8].t()]
    together = decode_together([StreamingDecoder(step) for _ in chunks], chunks)
    assert passes == [2]  # the two 4-frame chunks; each 8-frame one alone, in two calls of 4
    for got, chunk in zip(together, chunks, strict=True):
        assert torch.equal(got, StreamingDecoder(step).decode(chunk))


@pytest.mark.parametrize("length", [3, 8])
def test_a_batched_pass_runs_its_tail_a_few_rows_at_a_time(decoder, codes, length):
    """The head of a pass takes all its rows; the tail, which holds the longest tensors, at most
    BATCHED_PASS_FRAMES frames of them at a time; every row still gets what it gets alone."""
    step = TorchCodec(decoder)
    heads: list[int] = []
    tails: list[int] = []
    head, tail = step.graph.head, step.graph.tail
    step.graph.head = lambda c, *rest: heads.append(c.shape[0]) or head(c, *rest)  # type: ignore[method-assign]
    step.graph.tail = lambda h, *rest: tails.append(h.shape[0]) or tail(h, *rest)  # type: ignore[method-assign]
    streams = [StreamingDecoder(step) for _ in range(4)]
    for stream, done in zip(streams, (0, 30, 75, 10), strict=True):
        stream.decode(codes[..., :done])
    alone = [stream.copy() for stream in streams]
    starts = (3, 40, 80, 50)
    chunks = [codes[0, :, start : start + length].t() for start in starts]
    heads.clear(), tails.clear()
    together = decode_together(streams, chunks)
    assert BATCHED_PASS_FRAMES == 8
    assert heads == [4] and tails == ([2, 2] if length == 3 else [1, 1, 1, 1])
    for got, twin, chunk in zip(together, alone, chunks, strict=True):
        assert (got - twin.decode(chunk)).abs().max() < 1e-5
    nxt = codes[..., 60:62]
    for stream, twin in zip(streams, alone, strict=True):
        assert stream.frames == twin.frames
        assert (stream.decode(nxt) - twin.decode(nxt)).abs().max() < 1e-5

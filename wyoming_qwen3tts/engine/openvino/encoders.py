"""The voice-cloning encoders of a Base model in OpenVINO: reference audio -> speaker embedding and codes.

qwen-tts clones a voice with two small networks that run once per voice (Qwen3TTSModel.
create_voice_clone_prompt): the speaker encoder (an ECAPA-TDNN over a log-mel spectrogram -> one
embedding) and the 12 Hz codec's Mimi encoder (24 kHz waveform -> 16 codes per 80 ms frame, for in-context
cloning). `export_encoders` converts both straight from torch; `OpenVINOEncoders` runs them with the steps
qwen-tts takes around them (mono, librosa resampling to 24 kHz, the mel spectrogram, trimming the codes to
the audio's length), so the OpenVINO backend builds clone prompts without loading the torch model.

Weights stay float32 and run in f32 even where the CPU offers bf16: the encoders run once per voice, and a
code is an argmin over codebook distances, where rounding can pick a different code.
"""

from __future__ import annotations

import copy
import functools
import logging
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import openvino as ov
import torch
import torch.nn.functional as F
from torch import nn

_LOGGER = logging.getLogger(__name__)

SPEAKER_ENCODER = "speaker_encoder.xml"  # log-mel frames [T, 128] -> speaker embedding [H]
CODEC_ENCODER = "codec_encoder.xml"  # 24 kHz waveform [samples] -> codes [frames, 16]

SAMPLE_RATE = 24000  # both encoders' input rate (qwen-tts asserts it for the speaker encoder)
SAMPLES_PER_FRAME = 1920  # one 12.5 Hz code frame
# The mel spectrogram qwen-tts's extract_speaker_embedding computes (its mel_spectrogram's arguments).
N_FFT = 1024
NUM_MELS = 128
HOP_SIZE = 256
WIN_SIZE = 1024
FMAX = 12000
# Example inputs for tracing: any length works, the length stays dynamic.
EXAMPLE_MEL_FRAMES = 200
EXAMPLE_SAMPLES = 2 * SAMPLE_RATE


class SpeakerEncoderGraph(nn.Module):
    """The speaker encoder for one clip: log-mel frames [T, 128] -> embedding [H]."""

    def __init__(self, speaker_encoder: nn.Module) -> None:
        super().__init__()
        self.speaker_encoder = speaker_encoder

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.speaker_encoder(mel[None])[0]


class CodecEncoderGraph(nn.Module):
    """The Mimi encoder for one clip: waveform [samples] -> codes [frames, quantizers].

    Runs the encoder's parts one by one, as MimiModel._encode_frame does, but with the causal attention
    mask built here: transformers' mask helpers do not trace. The mask is the plain causal one qwen-tts
    gets on the CPU (eager and SDPA attention ignore Mimi's sliding window; only flash attention uses it).
    """

    mimi: Any  # transformers' MimiModel (qwen-tts's Qwen3TTSTokenizerV2Encoder)

    def __init__(self, mimi: nn.Module, quantizers: int) -> None:
        super().__init__()
        self.mimi = mimi
        self.quantizers = quantizers

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        hidden = self.mimi.encoder(waveform[None, None]).transpose(1, 2)
        frames = hidden.shape[1]
        mask = torch.full((frames, frames), torch.finfo(hidden.dtype).min, dtype=hidden.dtype).triu(1)
        positions = torch.arange(frames)[None]
        for layer in self.mimi.encoder_transformer.layers:
            hidden = layer(hidden, attention_mask=mask[None, None], position_ids=positions)[0]
        embeddings = self.mimi.downsample(hidden.transpose(1, 2))
        return self.mimi.quantizer.encode(embeddings, self.quantizers)[:, 0].transpose(0, 1)


def _float_copy(module: nn.Module) -> nn.Module:
    """A float32 copy for tracing: the served model may be in another dtype, and stays untouched."""
    module = copy.deepcopy(module).float().eval()
    # Nothing to differentiate: also lets tracing use tensors qwen-tts cached under inference_mode
    # (the codebooks' embeddings), which autograd would refuse.
    module.requires_grad_(False)
    return module


def _check_rates(model: Any) -> None:
    """Refuse a model whose encoders take other rates than the ones OpenVINOEncoders feeds them."""
    tokenizer = model.speech_tokenizer
    rates = {
        "speaker encoder sample rate": (model.speaker_encoder_sample_rate, SAMPLE_RATE),
        "codec input sample rate": (tokenizer.feature_extractor.sampling_rate, SAMPLE_RATE),
        "codec samples per frame": (tokenizer.model.encode_downsample_rate, SAMPLES_PER_FRAME),
    }
    for name, (actual, expected) in rates.items():
        if int(actual) != expected:
            raise ValueError(f"cannot export the encoders: {name} is {actual}, not {expected}")


def export_encoders(model: Any, out_dir: Path) -> list[Path]:
    """Write speaker_encoder.xml and codec_encoder.xml (float32 weights) for a loaded Base model.

    model: a qwen-tts Qwen3TTSForConditionalGeneration (Qwen3TTSModel.model) of kind base.
    Returns the files written (each .xml and its .bin).
    """
    if model.tts_model_type != "base":
        raise ValueError(f"only Base models clone voices; this model is {model.tts_model_type}")
    _check_rates(model)
    codec = model.speech_tokenizer.model
    graphs = {
        SPEAKER_ENCODER: (
            SpeakerEncoderGraph(_float_copy(model.speaker_encoder)),
            torch.randn(EXAMPLE_MEL_FRAMES, NUM_MELS) - 5.0,  # about where log-mels of speech lie
            ov.PartialShape([-1, NUM_MELS]),
        ),
        CODEC_ENCODER: (
            CodecEncoderGraph(_float_copy(codec.encoder), codec.encoder_valid_num_quantizers),
            0.1 * torch.randn(EXAMPLE_SAMPLES),
            ov.PartialShape([-1]),
        ),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, (graph, example, shape) in graphs.items():
        started = time.monotonic()
        with warnings.catch_warnings():
            # The tracer warns about Python values taken from shapes; the lengths stay dynamic (tested).
            # OpenVINO traces with torch.jit.trace, which torch now calls deprecated.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", "`torch.jit.trace", DeprecationWarning)
            converted = ov.convert_model(graph, example_input=(example,), input=[shape])
        path = out_dir / name
        ov.save_model(converted, path, compress_to_fp16=False)
        written += [path, path.with_suffix(".bin")]
        _LOGGER.info("Exported %s in %.1f s", path, time.monotonic() - started)
    return written


@functools.cache
def _mel_basis() -> torch.Tensor:
    """The slaney-normalised mel filterbank qwen-tts builds with librosa: [128, 513]."""
    return torch.from_numpy(
        librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=NUM_MELS, fmin=0, fmax=FMAX)
    )


def log_mel(waveform: torch.Tensor) -> torch.Tensor:
    """24 kHz waveform [samples] -> log-mel frames [T, 128], as qwen-tts's mel_spectrogram computes them."""
    padding = (N_FFT - HOP_SIZE) // 2
    padded = F.pad(waveform[None, None], (padding, padding), mode="reflect")[0]
    spectrum = torch.stft(
        padded,
        N_FFT,
        hop_length=HOP_SIZE,
        win_length=WIN_SIZE,
        window=torch.hann_window(WIN_SIZE),
        center=False,
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    magnitude = torch.sqrt(torch.view_as_real(spectrum).pow(2).sum(-1) + 1e-9)
    mel = torch.matmul(_mel_basis().float(), magnitude)
    return torch.log(torch.clamp(mel, min=1e-5))[0].T


def at_encoder_rate(waveform: np.ndarray, rate: int) -> np.ndarray:
    """Mono float32 at 24 kHz: channels (last axis) averaged, resampled with librosa as qwen-tts does."""
    audio = np.asarray(waveform, dtype=np.float32)
    if audio.ndim > 1:
        audio = np.mean(audio, axis=-1).astype(np.float32)
    if int(rate) != SAMPLE_RATE:
        audio = librosa.resample(y=audio, orig_sr=int(rate), target_sr=SAMPLE_RATE)
    return audio.astype(np.float32)


class OpenVINOEncoders:
    """The exported encoders of a Base model; each is compiled on first use.

    A server whose clone prompts all come from the voice cache never compiles them.
    config: compile properties (threads, hints) for core.compile_model; the encoders always run in f32.
    """

    def __init__(self, out_dir: Path, core: ov.Core, config: dict, device: str = "CPU") -> None:
        missing = [name for name in (SPEAKER_ENCODER, CODEC_ENCODER) if not (out_dir / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{out_dir} has no {' or '.join(missing)}: export the Base model again")
        self._dir = out_dir
        self._core = core
        self._config = {**config, "INFERENCE_PRECISION_HINT": "f32"}
        self._device = device
        self._compiled: dict[str, ov.CompiledModel] = {}
        self._lock = threading.Lock()  # two voices loading at once compile each model once

    def _model(self, name: str) -> ov.CompiledModel:
        with self._lock:
            if name not in self._compiled:
                started = time.monotonic()
                self._compiled[name] = self._core.compile_model(self._dir / name, self._device, self._config)
                _LOGGER.debug("Compiled %s in %.2f s", name, time.monotonic() - started)
            return self._compiled[name]

    def speaker_embedding(self, waveform: np.ndarray, rate: int) -> torch.Tensor:
        """The speaker embedding [H] of a clip (qwen-tts's ref_spk_embedding)."""
        mel = log_mel(torch.from_numpy(at_encoder_rate(waveform, rate)))
        embedding = self._model(SPEAKER_ENCODER)(mel.numpy())[0]
        return torch.from_numpy(np.array(embedding, dtype=np.float32))

    def reference_codes(self, waveform: np.ndarray, rate: int) -> torch.Tensor:
        """The codes [frames, 16] of a clip (qwen-tts's ref_code): one frame per started 80 ms."""
        audio = at_encoder_rate(waveform, rate)
        codes = self._model(CODEC_ENCODER)(audio)[0]
        frames = -(-audio.size // SAMPLES_PER_FRAME)
        return torch.from_numpy(np.array(codes[:frames], dtype=np.int64))

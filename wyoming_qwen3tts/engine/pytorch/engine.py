"""The PyTorch CPU backend: Qwen3-TTS on the qwen-tts model classes.

Loads a 12 Hz checkpoint from a local directory in the formats its
`TorchOptions` choose (precision.py), hands its parts to the shared pipeline
(engine/pipeline.py), which builds the voice catalog for its kind (preset
speakers, clones, designs) and turns one sentence at a time into 16-bit PCM.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...cpu import default_threads
from ...requests import EngineError
from ...voices import model_fingerprint
from ..checkpoint_pages import CheckpointPages, release_checkpoint_pages
from ..codec import TorchCodec
from ..options import EngineOptions
from ..pipeline import EngineParts, PipelineEngine, to_pcm16
from ..prompt import PromptBuilder, TorchEmbeddingTables
from ..qwen_import import import_qwen_tts
from ..seams import CloneReference, ModelSteps, ReferenceEncoder
from ..split_steps import SplitSteps
from .compiled_steps import compile_if_useful
from .fused_steps import fuse_steps
from .options import TorchOptions
from .precision import Precision, choose_precision
from .quantize import KERNELS
from .steps import LinearFactory, TorchSteps, keep_float
from .traced_steps import trace_steps

__all__ = ["PyTorchEngine", "apply_precision", "configure_threads", "to_pcm16"]

_LOGGER = logging.getLogger(__name__)


def configure_threads(options: EngineOptions) -> int:
    """Set torch's thread pools from the options; return the intra-op thread count."""
    threads = options.threads or default_threads()
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(max(1, options.interop_threads))
    except RuntimeError:  # only settable before the first parallel op; keep what is there
        _LOGGER.debug("Inter-op threads already fixed at %s", torch.get_num_interop_threads())
    return threads


def _cast(module: torch.nn.Module, dtype: torch.dtype, keep: tuple[torch.nn.Module, ...] = ()) -> None:
    """Cast module's floating parameters and buffers to dtype, except inside the modules in keep."""
    kept = {id(t) for m in keep for t in (*m.parameters(), *m.buffers())}
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point() and id(tensor) not in kept and tensor.dtype != dtype:
            tensor.data = tensor.data.to(dtype)


def apply_precision(
    model: Any, precision: Precision, kernel: LinearFactory | None = None, predictor: bool = True
) -> TorchSteps:
    """Give each part of a loaded model the formats precision names (see precision.py).

    Returns the steps, which take over (and, for int8, quantize) the talker's
    and code predictor's projections; kernel, if given, makes each of them
    (another backend's layers) instead of quantize.py's. predictor False: another backend runs the code
    predictor, whose weights are released.
    """
    talker = model.talker
    # The text embedding (151936 x 2048) and its projection only build prompts: they keep the load dtype.
    # The speaker encoder follows the talker: qwen-tts casts its input to the model's (first) dtype.
    keep: tuple[torch.nn.Module, ...] = (talker.model.text_embedding, talker.text_projection)
    if precision.int8_kernel:
        # Quantized straight from the loaded weights: casting them to float32 first would double the
        # peak memory of loading for weights that are about to become int8.
        code_predictor = talker.code_predictor
        stacks = (talker.model.layers, code_predictor.model.layers, code_predictor.lm_head, talker.codec_head)
        keep += tuple(m for stack in stacks for m in stack.modules() if isinstance(m, torch.nn.Linear))
    pages = CheckpointPages()  # what transformers mapped; from here on its pages are only read
    _cast(model, getattr(torch, precision.compute_dtype), keep=keep)
    _cast(model.speech_tokenizer.model.decoder, getattr(torch, precision.codec_dtype))
    pages.release()
    convert = kernel or (KERNELS[precision.int8_kernel] if precision.int8_kernel else keep_float)

    def make_linear(linear: torch.nn.Linear) -> torch.nn.Module:
        # Each converted layer's checkpoint pages go at once, so they never pile up into the peak.
        converted = convert(linear)
        pages.release()
        return converted

    return TorchSteps(model, make_linear, predictor=predictor)


class TorchReferenceEncoder(ReferenceEncoder):
    """Clones a voice with qwen-tts's own create_voice_clone_prompt (speaker and codec encoders)."""

    def __init__(self, tts: Any) -> None:
        self._tts = tts

    def clone_reference(self, waveform: np.ndarray, rate: int, transcript: str | None) -> CloneReference:
        item = self._tts.create_voice_clone_prompt(
            ref_audio=(waveform, rate), ref_text=transcript, x_vector_only_mode=transcript is None
        )[0]
        return CloneReference(item.ref_code, item.ref_spk_embedding, item.ref_text)


class PyTorchEngine(PipelineEngine):
    """Qwen3-TTS on plain PyTorch, on the qwen-tts model classes.

    Another backend on the same model classes (ipex.py) overrides
    _choose_precision and _steps, where the kernels are chosen.
    """

    def _choose_precision(self, options: TorchOptions) -> Precision:
        return choose_precision(options)

    def _choose_predictor(self, options: TorchOptions) -> str:
        return options.predictor

    def _steps(self, model: Any, predictor: bool = True) -> TorchSteps:
        return apply_precision(model, self.precision, predictor=predictor)

    def _compile(self, steps: TorchSteps) -> str:
        """--compile: what it did, for the load log line."""
        return compile_if_useful(steps, self.precision.int8_kernel)

    def __init__(self, model_dir: Path, options: EngineOptions, torch_options: TorchOptions) -> None:
        qwen_tts = import_qwen_tts()
        threads = configure_threads(options)
        try:
            self.precision = self._choose_precision(torch_options)
        except ValueError as err:
            raise EngineError(str(err), "bad-settings") from None
        self.predictor = self._choose_predictor(torch_options)
        predictor_export = None
        if self.predictor != "pytorch":  # before the model is loaded: the exporter's memory is its own
            from ..openvino.predictor import ensure_predictor_export

            weights = self.predictor.removeprefix("openvino-")
            predictor_export = ensure_predictor_export(model_dir, options.data_dir, weights)
        started = time.monotonic()
        tts = qwen_tts.Qwen3TTSModel.from_pretrained(
            str(model_dir),
            dtype=getattr(torch, self.precision.load_dtype),
            attn_implementation=torch_options.attn,
        )
        model = tts.model.eval()
        torch_steps = self._steps(model, predictor=predictor_export is None)
        description = f"{self.precision.describe()}; {threads} threads"
        if torch_options.compile:
            description += f"; {self._compile(torch_steps)}"
        if (
            torch_options.trace_steps
            and torch_steps.talker_stack.one_token == torch_steps.talker_stack.eager_one_token
        ):
            description += f"; {trace_steps(torch_steps)}"  # what --compile compiled stays compiled
        if torch_options.fused_steps and (fused := fuse_steps(torch_steps)):
            description += f"; {fused}"
        steps: ModelSteps = torch_steps
        if predictor_export is not None:
            from ..openvino.predictor import load_predictor

            steps = SplitSteps(torch_steps, load_predictor(predictor_export, torch_steps.layout, threads))
            description += f"; code predictor on OpenVINO ({self.predictor.removeprefix('openvino-')})"
        codec_threads = self._codec_threads(threads, torch_options)
        if codec_threads:
            description += f"; codec on {codec_threads} of them beside the steps"
        base = model.tts_model_type == "base"
        encoders = [
            ("speaker_encoder", model.speaker_encoder),
            ("codec_encoder", model.speech_tokenizer.model.encoder),
        ]
        parts = EngineParts(
            steps=steps,
            prompts=PromptBuilder.from_model_dir(TorchEmbeddingTables(model), model_dir),
            codec=TorchCodec(model.speech_tokenizer.model.decoder),
            encoder=TorchReferenceEncoder(tts) if base else None,
            clone_fingerprint=lambda: model_fingerprint(encoders),
            description=description,
            codec_threads=codec_threads,
        )
        super().__init__(model_dir, options, parts, started)

    def _codec_threads(self, threads: int, options: TorchOptions) -> int:
        """Threads of the codec's own thread: half, where the steps are PyTorch's on 2 or more threads
        (an OpenVINO predictor keeps its own thread pool, which would then compete)."""
        if not options.codec_thread or self.predictor != "pytorch" or threads < 2:
            return 0
        return threads // 2

    def _after_clone_prompts(self) -> None:
        release_checkpoint_pages()  # what the encoders read to build and fingerprint clone prompts

"""The 12 Hz codec decoder in OpenVINO: the streaming chunk step of engine/codec.py, exported as IR.

`export_codec` converts `CodecGraph` (the same pure `(codes, frames, state) -> (samples, state)` function
TorchCodec runs) straight from torch, so the two backends share one definition of the streaming math.
The IR is stateless: the state goes in and comes out as explicit tensors, so any number of concurrent
streams share one compiled model, each holding its own DecoderState.

IR inputs, in order: `codes` [1, 16, T] int64 (T dynamic), `frames` [] int64 (frames decoded so far, the
RoPE position), then the state: `conv.{i}` [1, C_i, context_i] per stateful conv in decoding order,
`key.{l}` and then `value.{l}` [1, heads, sliding_window - 1, head_dim] per transformer layer. Outputs:
`audio` [T * 1920] float32 in [-1, 1], then the next state under the input names with a `next_` prefix.
All state shapes are static; only T varies.

Weights (`--weights`), measured on the real-size random codec (see the module's tests and the report):
- fp32: as converted.
- fp16: every weight stored in f16 (half the file); the CPU plugin widens them to f32 when it compiles,
  so the speed is fp32's.
- int8: NNCF int8 symmetric per-channel on the matrix products (transformer, ConvNeXt MLPs, the polyphase
  transposed convs, which hold most of the codec's weights); convs and codebooks stay float32: they are
  computed at the full 24 kHz sample rate where the error is heard, and the CPU plugin would widen their
  weights at compile time anyway.
- int4: int4 symmetric (group 128) on the same matrix products, int8 where a group does not fit.
"""

from __future__ import annotations

import copy
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import torch

from ..codec import CodecGraph
from ..seams import CodecStep, DecoderState

CODEC = "codec.xml"
WEIGHTS = ("fp32", "fp16", "int8", "int4")
EXAMPLE_FRAMES = 3  # tracing only: the frame count stays dynamic


def state_names(graph: CodecGraph) -> list[str]:
    """Names of the state inputs in IR order (outputs add the prefix `next_`)."""
    convs = len(graph.state_shapes()) - 2 * len(graph._layers)
    layers = range(len(graph._layers))
    return [
        *(f"conv.{i}" for i in range(convs)),
        *(f"key.{i}" for i in layers),
        *(f"value.{i}" for i in layers),
    ]


def export_codec(codec_decoder: Any, out_dir: Path, weights: str = "fp16") -> Path:
    """Convert the codec's chunk step to `out_dir/codec.xml` (+ .bin) with weights per WEIGHTS."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, not {weights!r}")
    if next(codec_decoder.parameters()).dtype != torch.float32:  # the IR is converted from float32
        codec_decoder = copy.deepcopy(codec_decoder).float()
    graph = CodecGraph(codec_decoder).eval()
    state = graph.zero_state()
    codes = torch.randint(
        0, int(codec_decoder.config.codebook_size), (1, graph.num_quantizers, EXAMPLE_FRAMES)
    )
    example = (codes, torch.tensor(0), *state)
    shapes = [
        (ov.PartialShape([1, graph.num_quantizers, -1]), ov.Type.i64),
        (ov.PartialShape([]), ov.Type.i64),
        *((ov.PartialShape(list(t.shape)), ov.Type.f32) for t in state),
    ]
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer flags the static shape checks and re-runs SDPA with float-rounding differences.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        model = ov.convert_model(graph, example_input=example, input=shapes)
    names = ["codes", "frames", *state_names(graph)]
    for port, name in zip(model.inputs, names, strict=True):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, ["audio", *(f"next_{n}" for n in names[2:])], strict=True):
        port.get_tensor().set_names({name})
    model = _compress(model, weights)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CODEC
    ov.save_model(model, path, compress_to_fp16=weights == "fp16")
    return path


def _compress(model: ov.Model, weights: str) -> ov.Model:
    """NNCF weight compression of the matrix products only (see the module docstring)."""
    if weights in ("fp32", "fp16"):
        return model
    import nncf

    float_ops = nncf.IgnoredScope(types=["Convolution", "GroupConvolution", "Gather"])
    if weights == "int8":
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_SYM, ignored_scope=float_ops)
    return nncf.compress_weights(
        model,
        mode=nncf.CompressWeightsMode.INT4_SYM,
        group_size=128,
        ratio=1.0,
        all_layers=True,
        ignored_scope=float_ops,
    )


class OpenVINOCodec(CodecStep):
    """The codec chunk step on an exported codec.xml; the state is explicit, so streams share it.

    config: compile properties chosen by the caller (performance hint, threads, cache dir). Each call
    borrows an infer request from a pool (one per concurrently decoding thread), feeds the state tensors
    without copying and returns the outputs as tensors of their own.
    """

    # OpenVINO keeps buffers for the largest chunk it has seen: 8 frames held ~0.3 GB more than 4, and a
    # frame costs about the same from 3 frames a pass up (74-78 ms against 73 at 8, real-size codec).
    max_frames_per_pass = 4

    def __init__(self, xml_path: Path, core: ov.Core, config: dict, device: str = "CPU") -> None:
        self._compiled = core.compile_model(Path(xml_path), device, config)
        inputs = self._compiled.inputs
        self.num_quantizers = int(inputs[0].get_partial_shape()[1].get_length())
        self.samples_per_frame = 1920  # 24 kHz / 12.5 Hz; checked on the first decode
        names = [port.get_any_name() for port in inputs]
        convs = sum(name.startswith("conv.") for name in names)
        layers = sum(name.startswith("key.") for name in names)
        self._split = (convs, convs + layers)
        zeros = [torch.zeros(list(port.get_shape()), dtype=torch.float32) for port in inputs[2:]]
        self._initial = self._state(0, zeros)
        self._idle: list[ov.InferRequest] = []
        self._lock = threading.Lock()

    def _state(self, frames: int, tensors: list[torch.Tensor]) -> DecoderState:
        convs, keys = self._split
        return DecoderState(frames, tuple(tensors[:convs]), tuple(tensors[convs:keys]), tuple(tensors[keys:]))

    def initial_state(self) -> DecoderState:
        return self._initial

    def decode(self, codes: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        inputs = [
            np.ascontiguousarray(codes.numpy(), dtype=np.int64),
            np.array(state.frames, dtype=np.int64),
            *(tensor.numpy() for tensor in state.tensors()),
        ]
        with self._lock:
            request = self._idle.pop() if self._idle else self._compiled.create_infer_request()
        try:
            request.infer(inputs, share_inputs=True)
            # The request reuses its output buffers on its next call: keep copies.
            outputs = [
                torch.from_numpy(request.get_output_tensor(i).data.copy()) for i in range(len(inputs) - 1)
            ]
        finally:
            with self._lock:
                self._idle.append(request)
        audio = outputs[0]
        if audio.shape[0] != codes.shape[2] * self.samples_per_frame:
            raise ValueError(f"codec.xml gave {audio.shape[0]} samples for {codes.shape[2]} frames")
        return audio, self._state(state.frames + codes.shape[2], outputs[1:])

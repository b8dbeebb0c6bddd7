"""Streaming decoder for the 12 Hz Qwen3-TTS codec: every frame is decoded once, state carries over.

Upstream `Qwen3TTSTokenizerV2Decoder.chunked_decode` decodes each chunk again together with 25 frames of
left context, which for the small chunks of a streamed reply multiplies the work several times and is
still only an approximation of decoding the whole utterance. Every layer of that decoder is causal, so
the chunk step here instead takes, per layer, what the next chunk needs of the past: the last
(k-1)*dilation inputs of each causal conv, the last input of each causal transposed conv and the last
sliding_window - 1 keys and values of each transformer layer, plus the frame position for RoPE. Decoding
in chunks of any size then gives the same samples as decoding the whole utterance at once (up to float
rounding).

The seam between the stream and a backend is `CodecStep` (engine/seams.py), a pure `(codes, state) ->
(pcm, state)`: `TorchCodec` runs `CodecGraph` eagerly, the OpenVINO backend (engine/openvino/codec.py)
runs the same graph converted to IR. `StreamingDecoder` only holds a step and the current state. A state
is a snapshot of immutable tensors, so a voice-clone reference prompt can be decoded once and its state
restored at the start of every request that uses it, and concurrent streams share one step.

For the CPU, SnakeBeta runs in place on its own temporaries, the transposed convs as one matrix product
each (their output copied into the channels-first layout) and the 1x1 convs as matrix products (same
values up to rounding); in float32 TorchCodec also runs the other layers of engine/codec_kernels.py (wide
and output convs as MKL matrix products, SnakeBeta written straight into the next conv's padded input).
The k=7 convs dominate, about 2.4 GMAC a frame; small chunks also pay for reading all weights (~450 MB in
float32) once per call, so 4-8 frames a chunk cost about half as much per frame as 1. Keep the codec in
float32 on CPUs without native bfloat16 (AVX2): there bf16 convs take reference kernels, ~40x slower.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from . import codec_kernels as kernels
from .seams import CodecStep, DecoderState

# A batched pass runs the codec's head (its transformer, upsampling and first decoder blocks, which read
# their weights once for all rows) on up to BATCHED_HEAD_FRAMES frames of all its rows, then its tail
# (the last blocks: bound by arithmetic, with the longest tensors) on at most BATCHED_PASS_FRAMES, a
# stream's largest chunk, so decoding several streams at once needs little more memory than one (four
# rows of 8 frames through the whole codec held 70 MB more).
BATCHED_HEAD_FRAMES = 32
BATCHED_PASS_FRAMES = 8
HEAD_BLOCKS = 2  # decoder blocks in the head: up to 384 channels at 160 samples a frame


class StreamingDecoder:
    """One stream: a codec step and the state it has reached. `decode(codes)` returns the new samples only.

    `StreamingDecoder(codec_decoder_module)` wraps the module in a TorchCodec; pass a CodecStep to share
    one step (and its weight tables) between streams, or copy() a decoder.
    """

    def __init__(self, step: CodecStep | nn.Module, state: DecoderState | None = None) -> None:
        self.step = step if isinstance(step, CodecStep) else TorchCodec(step)
        self.num_quantizers = self.step.num_quantizers
        self.samples_per_frame = self.step.samples_per_frame
        self.state = state if state is not None else self.step.initial_state()

    @property
    def frames(self) -> int:
        """Frames decoded so far."""
        return self.state.frames

    def reset(self) -> None:
        """Start a new stream, as if nothing had been decoded."""
        self.state = self.step.initial_state()

    def snapshot(self) -> DecoderState:
        """The current state, to restore() later (e.g. after decoding a reference prompt)."""
        return self.state

    def restore(self, state: DecoderState) -> None:
        """Continue from a state taken by snapshot(), of this decoder or another on the same step."""
        self.state = state

    def copy(self) -> StreamingDecoder:
        """An independent stream on the same step, continuing from this one's current state."""
        return StreamingDecoder(self.step, self.state)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Decode new frames, codes [T, 16] or [1, 16, T], to their T * 1920 float32 samples at 24 kHz."""
        if codes.dim() == 2:
            codes = codes.t().unsqueeze(0)
        if codes.dim() != 3 or codes.shape[0] != 1 or codes.shape[1] != self.num_quantizers:
            raise ValueError(f"expected codes [T, {self.num_quantizers}] or [1, {self.num_quantizers}, T]")
        codes = codes.to(torch.long)
        wavs = []
        per_pass = self.step.max_frames_per_pass
        for start in range(0, codes.shape[2], per_pass):
            wav, self.state = self.step.decode(codes[..., start : start + per_pass], self.state)
            wavs.append(wav)
        if not wavs:
            return torch.zeros(0)
        return wavs[0] if len(wavs) == 1 else torch.cat(wavs)


def decode_together(decoders: list[StreamingDecoder], chunks: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each decoder's samples for its chunk of codes [T_i, 16], as decode() gives them one by one.

    Chunks of the same length on the same step run as one batched pass (CodecStep.decode_rows): a pass
    reads every weight of the codec, and the first, one-frame chunks of several new sentences cost
    little more together than one alone. A pass takes at most BATCHED_HEAD_FRAMES frames of all its
    rows; TorchCodec runs its tail on BATCHED_PASS_FRAMES at a time, so memory does not grow with the batch.
    """
    samples: list[torch.Tensor | None] = [None] * len(decoders)
    groups: dict[tuple[int, int], list[int]] = {}
    for index, (decoder, chunk) in enumerate(zip(decoders, chunks, strict=True)):
        groups.setdefault((id(decoder.step), chunk.shape[0]), []).append(index)
    passes = []  # a chunk longer than a pass of its step goes alone, and decode() splits it as it must
    for (_step, length), indices in groups.items():
        fits = length <= decoders[indices[0]].step.max_frames_per_pass
        rows = max(1, BATCHED_HEAD_FRAMES // length) if fits else 1
        passes += [indices[start : start + rows] for start in range(0, len(indices), rows)]
    for indices in passes:
        if len(indices) == 1:
            samples[indices[0]] = decoders[indices[0]].decode(chunks[indices[0]])
            continue
        step = decoders[indices[0]].step
        codes = torch.stack([chunks[index].t() for index in indices]).to(torch.long)
        wavs, states = step.decode_rows(codes, [decoders[index].state for index in indices])
        for row, index in enumerate(indices):
            decoders[index].state = states[row]
            samples[index] = wavs[row]
    assert all(wav is not None for wav in samples)
    return samples  # type: ignore[return-value]


class TorchCodec(CodecStep):
    """The chunk step in eager PyTorch, on the decoder module's own weights (only read, never changed)."""

    def __init__(self, codec_decoder: Any) -> None:
        """Wrap a Qwen3TTSTokenizerV2Decoder (`Qwen3TTSModel.model.speech_tokenizer.model.decoder`)."""
        dtype = next(codec_decoder.parameters()).dtype
        self.graph = CodecGraph(codec_decoder, cpu_kernels=dtype == torch.float32, pointwise_products=True)
        self.num_quantizers = self.graph.num_quantizers
        self.samples_per_frame = self.graph.samples_per_frame
        self._initial = self.graph.state(0, self.graph.zero_state())

    def initial_state(self) -> DecoderState:
        return self._initial

    def decode(self, codes: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        with torch.inference_mode():
            device = state.keys[0].device
            frames = torch.tensor(state.frames, device=device)
            wav, *tensors = self.graph(codes.to(device, torch.long), frames, *state.tensors())
        return wav.float(), self.graph.state(state.frames + codes.shape[2], tensors)

    def decode_rows(
        self, codes: torch.Tensor, states: list[DecoderState]
    ) -> tuple[torch.Tensor, list[DecoderState]]:
        """B streams in one pass: their states stacked on the batch axis, the graph's head run on all rows
        at once, its tail on BATCHED_PASS_FRAMES frames of them at a time, the states split again."""
        length = codes.shape[2]
        per_tail = max(1, BATCHED_PASS_FRAMES // length)
        wavs, rows = [], []
        with torch.inference_mode():
            device = states[0].keys[0].device
            frames = torch.tensor([state.frames for state in states], device=device)
            stacked = [torch.cat(parts) for parts in zip(*(state.tensors() for state in states), strict=True)]
            hidden, carried, keys, values = self.graph.head(codes.to(device, torch.long), frames, stacked)
            for start in range(0, len(states), per_tail):
                group = slice(start, start + per_tail)
                convs = [tensor[group] for tensor in carried]  # the tail replaces its convs' entries
                wavs.append(self.graph.tail(hidden[group], convs).float())
                for row in range(convs[0].shape[0]):
                    tensors = [tensor[row : row + 1] for tensor in convs]
                    tensors += [tensor[start + row : start + row + 1] for tensor in (*keys, *values)]
                    rows.append(self.graph.state(states[start + row].frames + length, tensors))
        return torch.cat(wavs), rows


class CodecGraph(nn.Module):
    """Qwen3TTSTokenizerV2Decoder.forward as a pure function of one chunk and the state before it.

    forward(codes [1, 16, T] int64, frames [] int64, *convs, *keys, *values) returns (samples [T * 1920],
    *convs, *keys, *values), the state tensors in the order of state_shapes(): the stateful convs in the
    order the decoder runs them, then the keys of each transformer layer, then its values. It never writes
    to its inputs, so TorchCodec calls it eagerly and export_codec converts it to OpenVINO as it is.

    cpu_kernels runs the layers of engine/codec_kernels.py instead (what TorchCodec does in float32): the
    same values up to float rounding, faster in eager PyTorch on the CPU; the exported graph keeps the
    decoder's own modules. pointwise_products runs just the 1x1 convs as matrix products (what TorchCodec
    does in bfloat16 too: oneDNN reorders a 1x1 conv's input and output on every call, which cost more than
    the conv; the same values) and the activations as the fused `Snake` (a rounding apart).
    """

    def __init__(
        self, codec_decoder: Any, cpu_kernels: bool = False, pointwise_products: bool = False
    ) -> None:
        super().__init__()
        config = codec_decoder.config
        self.decoder = codec_decoder
        self.num_quantizers = int(config.num_quantizers)
        self.samples_per_frame = int(codec_decoder.total_upsample)
        self._window = int(config.sliding_window)
        self._transformer = codec_decoder.pre_transformer
        self._layers = list(self._transformer.layers[: config.num_hidden_layers])
        attn = self._layers[0].self_attn
        self._head_dim = int(attn.head_dim)
        self._kv_heads = attn.k_proj.out_features // self._head_dim

        # The decoder's own module holds its RoPE helper (qwen_tts is imported by now).
        modeling = importlib.import_module(type(codec_decoder).__module__)
        self._apply_rope: Callable[..., tuple[torch.Tensor, torch.Tensor]] = modeling.apply_rotary_pos_emb

        # Codebooks divided by their usage once, not on every call as EuclideanCodebook.decode does.
        quantizer = codec_decoder.quantizer
        self._quantizers = [quantizer.rvq_first, quantizer.rvq_rest]
        with torch.no_grad():
            self._codebooks = [
                [
                    (book.embedding_sum / book.cluster_usage.clamp(min=book.epsilon)[:, None]).detach(),
                    layer.project_out,
                ]
                for rvq in self._quantizers
                for layer in rvq.vq.layers
                for book in [layer._codebook]
            ]

        # (ConvTranspose with kernel == stride, ConvNeXt block) per upsampling step.
        self._upsample = [(pair[0], pair[1]) for pair in codec_decoder.upsample]
        first_conv, *blocks, self._last_act, self._last_conv = codec_decoder.decoder
        self._first_conv = first_conv
        # (SnakeBeta, causal ConvTranspose, residual units) per decoder block.
        self._blocks = [(block.block[0], block.block[1], list(block.block[2:])) for block in blocks]

        # Convs that need the past, in the order forward runs them: module -> (index into state, context).
        self._context: dict[Any, tuple[int, int]] = {}
        convs = [codec_decoder.pre_conv, *(convnext.dwconv for _up, convnext in self._upsample), first_conv]
        for _act, upsample, units in self._blocks:
            convs += [upsample, *(conv for unit in units for conv in (unit.conv1, unit.conv2))]
        for module in [*convs, self._last_conv]:
            context = _context(module)
            if context:
                self._context[module] = (len(self._context), context)
        # Transposed convs of kernel stride or 2 * stride as one matrix product each (see _polyphase).
        self._polyphase = {
            module: _polyphase_weights(module.conv)
            for module in [*(up for up, _convnext in self._upsample), *self._context]
            if isinstance(module.conv, nn.ConvTranspose1d)
            and module.conv.kernel_size[0] in (module.conv.stride[0], 2 * module.conv.stride[0])
        }
        self._kernels = cpu_kernels
        self._snakes: dict[Any, kernels.Snake] = {}
        self._gemms: dict[Any, kernels.GemmConv] = {}
        if cpu_kernels or pointwise_products:
            acts = [self._last_act, *(act for act, _up, _units in self._blocks)]
            acts += [
                act for _act, _up, units in self._blocks for unit in units for act in (unit.act1, unit.act2)
            ]
            self._snakes = {act: kernels.Snake(act) for act in acts}
        self._gemms = {
            module: kernels.GemmConv(module.conv, together=cpu_kernels)
            for module in [*convs, self._last_conv]
            if isinstance(module.conv, nn.Conv1d)
            and module.conv.groups == 1
            and module.stride == 1
            and (cpu_kernels or (pointwise_products and module.conv.kernel_size[0] == 1))
        }

    def state_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the state tensors, in forward's order."""
        convs = [(1, module.conv.in_channels, context) for module, (_i, context) in self._context.items()]
        cache = (1, self._kv_heads, self._window - 1, self._head_dim)
        return [*convs, *[cache] * (2 * len(self._layers))]

    def zero_state(self) -> list[torch.Tensor]:
        """The state tensors before the first frame: zero conv inputs, empty (masked) caches."""
        param = next(self.decoder.parameters())
        return [torch.zeros(shape, dtype=param.dtype, device=param.device) for shape in self.state_shapes()]

    def state(self, frames: int, tensors: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> DecoderState:
        """A DecoderState of flat state tensors in forward's order."""
        convs, layers = len(self._context), len(self._layers)
        return DecoderState(
            frames,
            tuple(tensors[:convs]),
            tuple(tensors[convs : convs + layers]),
            tuple(tensors[convs + layers :]),
        )

    def forward(
        self, codes: torch.Tensor, frames: torch.Tensor, *state: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        hidden, carried, keys, values = self.head(codes, frames, state)
        # Rows one after another (one row: [T * 1920], as the exported graph has always returned).
        return (self.tail(hidden, carried).reshape(-1), *carried, *keys, *values)

    def head(
        self, codes: torch.Tensor, frames: torch.Tensor, state: list[torch.Tensor] | tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """forward up to the tail: (hidden [B, C, T'], the conv contexts, with the head's convs' replaced,
        the keys and the values)."""
        convs, layers = len(self._context), len(self._layers)
        carried = list(state[:convs])  # each replaced by its conv's new context as the chunk passes
        hidden = self._quantized(codes)
        hidden = self._conv(self.decoder.pre_conv, hidden, carried).transpose(1, 2)
        hidden, keys, values = self._attend(
            hidden, frames, state[convs : convs + layers], state[convs + layers :]
        )
        hidden = hidden.transpose(1, 2)
        for upsample, convnext in self._upsample:
            hidden = self._convnext(convnext, self._conv(upsample, hidden, carried), carried)
        hidden = self._conv(self._first_conv, hidden, carried)
        for block in self._blocks[:HEAD_BLOCKS]:
            hidden = self._block(block, hidden, carried)
        return hidden, carried, keys, values

    def tail(self, hidden: torch.Tensor, carried: list[torch.Tensor]) -> torch.Tensor:
        """The rest of forward on what head gave: samples [B, T * 1920]; replaces the tail's contexts."""
        for block in self._blocks[HEAD_BLOCKS:]:
            hidden = self._block(block, hidden, carried)
        if self._kernels:
            wav = self._snake_conv(self._last_act, self._last_conv, hidden, carried)
        else:
            wav = self._conv(self._last_conv, self._act(self._last_act, hidden), carried)
        return wav.clamp(min=-1, max=1).flatten(1)

    def _block(
        self, block: tuple[Any, Any, list[Any]], wav: torch.Tensor, carried: list[torch.Tensor]
    ) -> torch.Tensor:
        """A decoder block: SnakeBeta, the upsampling conv, the residual units."""
        act, upsample, units = block
        if self._kernels:
            wav = self._snake_conv(act, upsample, wav, carried)
            for unit in units:
                out = self._snake_conv(unit.act1, unit.conv1, wav, carried)
                wav = self._snake_conv(unit.act2, unit.conv2, out, carried, residual=wav)
            return wav
        wav = self._conv(upsample, self._act(act, wav), carried)
        for unit in units:
            out = self._conv(unit.conv1, self._act(unit.act1, wav), carried)
            wav = self._conv(unit.conv2, self._act(unit.act2, out), carried).add_(wav)
        return wav

    def _act(self, act: Any, x: torch.Tensor) -> torch.Tensor:
        """SnakeBeta on x: the fused one where this graph has it (TorchCodec's), else the upstream ops."""
        snake = self._snakes.get(act)
        return snake(x) if snake is not None else _snake(act, x)

    def _quantized(self, codes: torch.Tensor) -> torch.Tensor:
        """SplitResidualVectorQuantizer.decode: [1, 16, T] codes -> [1, codebook_dim, T], same sums."""
        books = iter(enumerate(self._codebooks))
        hidden: torch.Tensor | None = None
        for rvq in self._quantizers:
            quantized: torch.Tensor | None = None
            for _layer in rvq.vq.layers:
                index, (table, project_out) = next(books)
                looked_up = project_out(F.embedding(codes[:, index], table)).transpose(1, 2)
                quantized = looked_up if quantized is None else quantized + looked_up
            projected = rvq.output_proj(quantized)
            hidden = projected if hidden is None else hidden + projected
        assert hidden is not None
        return hidden

    def _conv(self, module: Any, x: torch.Tensor, carried: list[torch.Tensor]) -> torch.Tensor:
        """A causal (transposed) conv on x [1, C, T] continuing from the inputs it saw before."""
        entry = self._context.get(module)
        if entry is not None:  # else kernel 1, or transposed with kernel == stride: no past, no padding
            index, context = entry
            x = torch.cat([carried[index], x], dim=-1)
            carried[index] = x[..., -context:].clone()  # a copy: a slice would keep all of x alive
        return self._padded_conv(module, x)

    def _snake_conv(
        self,
        act: Any,
        module: Any,
        x: torch.Tensor,
        carried: list[torch.Tensor],
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """With cpu_kernels: conv(module, snake(x)) (+ residual), the snake written into the padded input."""
        snake = self._snakes[act]
        entry = self._context.get(module)
        if entry is None:
            padded = snake(x)
        else:
            index, context = entry
            padded = x.new_empty(x.shape[0], x.shape[1], context + x.shape[2])
            padded[..., :context] = carried[index]
            snake(x, out=padded[..., context:])
            carried[index] = padded[..., -context:].clone()
        gemm = self._gemms.get(module)
        if residual is not None and gemm is not None and gemm.kernel == 1:
            return gemm(padded, residual)
        out = self._padded_conv(module, padded)
        return out if residual is None else out.add_(residual)

    def _padded_conv(self, module: Any, x: torch.Tensor) -> torch.Tensor:
        """A causal (transposed) conv on x [1, C, context + T], its inputs before the chunk's prepended."""
        entry = self._context.get(module)
        polyphase = self._polyphase.get(module)
        if polyphase is not None:
            return kernels.polyphase(x, *polyphase) if self._kernels else _run_polyphase(x, *polyphase)
        gemm = self._gemms.get(module)
        if gemm is not None and gemm.fits(x.shape[0] * (x.shape[-1] - (entry[1] if entry else 0))):
            return gemm(x)
        if entry is not None and isinstance(module.conv, nn.ConvTranspose1d):
            # Outputs of the context inputs are dropped; the right end is trimmed as upstream does.
            context, stride = entry[1], module.conv.stride[0]
            return module.conv(x)[..., context * stride : x.shape[-1] * stride]
        return module.conv(x)

    def _convnext(self, block: Any, hidden: torch.Tensor, carried: list[torch.Tensor]) -> torch.Tensor:
        """Qwen3TTSTokenizerV2ConvNeXtBlock.forward with a stateful depthwise conv."""
        out = self._conv(block.dwconv, hidden, carried).permute(0, 2, 1)
        out = block.pwconv2(block.act(block.pwconv1(block.norm(out))))
        return hidden + (block.gamma * out).permute(0, 2, 1)

    def _attend(
        self,
        hidden: torch.Tensor,
        frames: torch.Tensor,
        past_keys: tuple[torch.Tensor, ...],
        past_values: tuple[torch.Tensor, ...],
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """The pre_transformer on hidden [B, T, latent] with a fixed-size sliding-window KV cache; frames
        is [] (one row) or [B], each row's frames decoded before."""
        transformer = self._transformer
        rows, length = hidden.shape[0], hidden.shape[1]
        hidden = transformer.input_proj(hidden)
        keep = self._window - 1
        frames = frames.reshape(-1, 1)  # [1 or B, 1]
        positions = frames + torch.arange(length, device=hidden.device)  # of the queries, [1 or B, T]
        cos, sin = transformer.rotary_emb(hidden, positions.expand(rows, -1))
        # Key j sits at frame frames - keep + j; query t may see it if it is a real frame (>= 0), not in
        # the future and within the window (transformers' sliding-window mask).
        key_positions = frames - keep + torch.arange(keep + length, device=hidden.device)  # [1 or B, K]
        offset = key_positions[:, None, :] - positions[:, :, None]
        mask = ((offset <= 0) & (offset > -self._window) & (key_positions[:, None, :] >= 0)).unsqueeze(1)
        shape = (rows, length, -1, self._head_dim)
        keys, values = [], []
        for layer, past_key, past_value in zip(self._layers, past_keys, past_values, strict=True):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            query = attn.q_norm(attn.q_proj(x).view(shape)).transpose(1, 2)
            key = attn.k_norm(attn.k_proj(x).view(shape)).transpose(1, 2)
            value = attn.v_proj(x).view(shape).transpose(1, 2)
            query, key = self._apply_rope(query, key, cos, sin)
            key = torch.cat([past_key, key], dim=2)
            value = torch.cat([past_value, value], dim=2)
            keys.append(key[:, :, -keep:])
            values.append(value[:, :, -keep:])
            if attn.num_key_value_groups > 1:  # grouped heads, spelled out for every backend's converter
                key = key.repeat_interleave(attn.num_key_value_groups, dim=1)
                value = value.repeat_interleave(attn.num_key_value_groups, dim=1)
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=attn.scaling)
            out = attn.o_proj(out.transpose(1, 2).reshape(rows, length, -1))
            hidden = hidden + layer.self_attn_layer_scale(out)
            hidden = hidden + layer.mlp_layer_scale(layer.mlp(layer.post_attention_layernorm(hidden)))
        return transformer.output_proj(transformer.norm(hidden)), keys, values


def _snake(act: Any, x: torch.Tensor) -> torch.Tensor:
    """SnakeBeta.forward, x + sin(x * alpha)^2 / beta, with one allocation instead of five (same values).

    The in-place steps only touch x * alpha, a new tensor: x itself is never written."""
    alpha = act.alpha.exp()[:, None]
    inverse_beta = 1.0 / (act.beta.exp()[:, None] + act.no_div_by_zero)
    return (x * alpha).sin_().pow_(2).mul_(inverse_beta).add_(x)


def _polyphase_weights(conv: nn.ConvTranspose1d) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A causal transposed conv (kernel s or 2s, stride s) as a matrix [taps * C_in, s * C_out] and its bias.

    Output block j (s samples) is x[j] @ W[..., :s] (+ x[j-1] @ W[..., s:] for kernel 2s): one GEMM over
    the time steps, which CPUs run several times faster than conv_transpose1d at these shapes.
    """
    weight = conv.weight.detach()  # [C_in, C_out, taps * s]
    c_in, c_out, kernel = weight.shape
    stride = conv.stride[0]
    taps = [weight[:, :, start : start + stride] for start in range(0, kernel, stride)]  # current, previous
    matrix = torch.cat([tap.permute(0, 2, 1).reshape(c_in, stride * c_out) for tap in taps])
    bias = conv.bias.detach() if conv.bias is not None else weight.new_zeros(c_out)
    return matrix.contiguous(), bias.repeat(stride), stride


def _run_polyphase(x: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor, stride: int) -> torch.Tensor:
    """Apply _polyphase_weights to x [B, C_in, T] (kernel 2s: past input, then T new): [B, C_out, T * s]."""
    steps = x.transpose(1, 2)  # [B, T, C_in]
    if matrix.shape[0] != steps.shape[2]:  # kernel 2s: each step beside the one before it
        steps = torch.cat([steps[:, 1:], steps[:, :-1]], dim=2)  # [B, T, 2 * C_in]: current, previous
    rows, length = steps.shape[0], steps.shape[1]
    out = torch.addmm(bias, steps.reshape(rows * length, -1), matrix)  # [B * T, s * C_out]: (phase, channel)
    return kernels.channels_first(out.view(rows, length, stride, -1))


def _context(module: Any) -> int:
    """How many past inputs a causal conv (Qwen3TTSTokenizerV2CausalConvNet) or transposed conv needs."""
    conv = module.conv
    if isinstance(conv, nn.ConvTranspose1d):  # Qwen3TTSTokenizerV2CausalTransConvNet
        kernel, stride = conv.kernel_size[0], conv.stride[0]
        if module.left_pad or module.right_pad != kernel - stride:
            raise ValueError("StreamingDecoder expects transposed convs trimmed by kernel - stride")
        return math.ceil(kernel / stride) - 1  # output block j depends on inputs j - context ... j
    if module.stride != 1:
        raise ValueError("StreamingDecoder supports causal convs of stride 1 only")
    return int(module.padding)  # (kernel_size - 1) * dilation

"""Streaming decoder for the 12 Hz Qwen3-TTS codec: every frame is decoded once, state carries over.

Upstream `Qwen3TTSTokenizerV2Decoder.chunked_decode` decodes each chunk again together with 25 frames of
left context, which for the small chunks of a streamed reply multiplies the work several times and is
still only an approximation of decoding the whole utterance. Every layer of that decoder is causal, so
`StreamingDecoder` instead keeps, per layer, what the next chunk needs of the past: the last (k-1)*dilation
inputs of each causal conv, the last input of each causal transposed conv and the last sliding_window - 1
keys and values of each transformer layer, plus the frame position for RoPE. Decoding in chunks of any
size then gives the same samples as decoding the whole utterance at once (up to float rounding).

A state is a snapshot of immutable tensors, so a voice-clone reference prompt can be decoded once and its
state restored at the start of every request that uses it.

For the CPU, SnakeBeta runs in place and the transposed convs as one matrix product each (same values up
to rounding). The k=7 convs dominate, about 2.4 GMAC a frame; small chunks also pay for reading all weights
(~450 MB in float32) once per call, so 4-8 frames a chunk cost about half as much per frame as 1. Keep the
codec in float32 on CPUs without native bfloat16 (AVX2): there bf16 convs take reference kernels, ~40x slower.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

# Largest number of frames run through the decoder in one pass: longer inputs (a reference prompt) are
# decoded in pieces, which bounds the memory of the wide upsampling layers (about 0.7 MB a frame each).
MAX_FRAMES_PER_PASS = 32


@dataclass(frozen=True)
class DecoderState:
    """A snapshot of a StreamingDecoder's carried state; its tensors are never changed in place."""

    frames: int  # frames decoded so far: the RoPE position of the next frame
    convs: tuple[torch.Tensor, ...]  # per stateful (transposed) conv: its last input samples
    keys: tuple[torch.Tensor, ...]  # per transformer layer: up to sliding_window - 1 keys after RoPE
    values: tuple[torch.Tensor, ...]


class StreamingDecoder:
    """Decode codec frames chunk by chunk with the codec decoder's causal state carried between chunks.

    One instance serves one stream (batch size 1); instances may share the decoder module, which is only
    read. `decode(codes)` returns the samples of the new frames only.
    """

    def __init__(self, codec_decoder: Any) -> None:
        """Wrap a Qwen3TTSTokenizerV2Decoder (`Qwen3TTSModel.model.speech_tokenizer.model.decoder`)."""
        config = codec_decoder.config
        self.decoder = codec_decoder
        self.num_quantizers = int(config.num_quantizers)
        self.samples_per_frame = int(codec_decoder.total_upsample)
        self._window = int(config.sliding_window)
        self._transformer = codec_decoder.pre_transformer
        self._layers = list(self._transformer.layers[: config.num_hidden_layers])
        attn = self._layers[0].self_attn
        self._head_dim = attn.head_dim

        # The decoder's own module holds its RoPE helper (qwen_tts is imported by now).
        modeling = importlib.import_module(type(codec_decoder).__module__)
        self._apply_rope = modeling.apply_rotary_pos_emb

        # (ConvTranspose with kernel == stride, ConvNeXt block) per upsampling step.
        self._upsample = [(pair[0], pair[1]) for pair in codec_decoder.upsample]
        first_conv, *blocks, self._last_act, self._last_conv = codec_decoder.decoder
        self._first_conv = first_conv
        # (SnakeBeta, causal ConvTranspose, residual units) per decoder block.
        self._blocks = [(block.block[0], block.block[1], list(block.block[2:])) for block in blocks]

        # Convs that need the past, by identity: module -> (index into the state, inputs of context kept).
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
        self._initial = self._zero_state()
        self.restore(self._initial)

    # --- state --------------------------------------------------------------------------------------

    def _zero_state(self) -> DecoderState:
        param = next(self.decoder.parameters())
        convs = [None] * len(self._context)
        for module, (index, context) in self._context.items():
            conv = module.conv
            channels = conv.in_channels
            convs[index] = torch.zeros(1, channels, context, dtype=param.dtype, device=param.device)
        attn = self._layers[0].self_attn
        heads = attn.k_proj.out_features // self._head_dim
        empty = torch.zeros(1, heads, 0, self._head_dim, dtype=param.dtype, device=param.device)
        return DecoderState(0, tuple(convs), (empty,) * len(self._layers), (empty,) * len(self._layers))

    def reset(self) -> None:
        """Start a new stream, as if nothing had been decoded."""
        self.restore(self._initial)

    def snapshot(self) -> DecoderState:
        """The current state, to restore() later (e.g. after decoding a reference prompt)."""
        return DecoderState(self.frames, tuple(self._convs), tuple(self._keys), tuple(self._values))

    def restore(self, state: DecoderState) -> None:
        """Continue from a state taken by snapshot(), of this decoder or another on the same module."""
        self.frames = state.frames
        self._convs = list(state.convs)
        self._keys = list(state.keys)
        self._values = list(state.values)

    def copy(self) -> StreamingDecoder:
        """An independent decoder on the same module, continuing from this one's current state."""
        other = object.__new__(StreamingDecoder)
        other.__dict__.update(self.__dict__)
        other.restore(self.snapshot())
        return other

    # --- decoding -----------------------------------------------------------------------------------

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Decode new frames, codes [T, 16] or [1, 16, T], to their T * 1920 float32 samples at 24 kHz."""
        if codes.dim() == 2:
            codes = codes.t().unsqueeze(0)
        if codes.dim() != 3 or codes.shape[0] != 1 or codes.shape[1] != self.num_quantizers:
            raise ValueError(f"expected codes [T, {self.num_quantizers}] or [1, {self.num_quantizers}, T]")
        frames = codes.shape[2]
        if frames == 0:
            return torch.zeros(0)
        with torch.inference_mode():
            codes = codes.to(self._initial.keys[0].device, torch.long)
            wavs = [
                self._decode_pass(codes[..., start : start + MAX_FRAMES_PER_PASS])
                for start in range(0, frames, MAX_FRAMES_PER_PASS)
            ]
            wav = wavs[0] if len(wavs) == 1 else torch.cat(wavs)
            return wav.float()

    def _decode_pass(self, codes: torch.Tensor) -> torch.Tensor:
        """Mirror Qwen3TTSTokenizerV2Decoder.forward, with each causal layer continuing its state."""
        hidden = self.decoder.quantizer.decode(codes)
        hidden = self._conv(self.decoder.pre_conv, hidden).transpose(1, 2)
        hidden = self._attend(hidden).transpose(1, 2)
        for upsample, convnext in self._upsample:
            hidden = self._convnext(convnext, self._conv(upsample, hidden))
        wav = self._conv(self._first_conv, hidden)
        for act, upsample, units in self._blocks:
            wav = self._conv(upsample, _snake(act, wav))
            for unit in units:
                out = self._conv(unit.conv1, _snake(unit.act1, wav))
                wav = self._conv(unit.conv2, _snake(unit.act2, out)).add_(wav)
        wav = self._conv(self._last_conv, _snake(self._last_act, wav))
        self.frames += codes.shape[2]
        return wav.clamp(min=-1, max=1).reshape(-1)

    def _conv(self, module: Any, x: torch.Tensor) -> torch.Tensor:
        """A causal (transposed) conv on x [1, C, T] continuing from the inputs it saw before."""
        entry = self._context.get(module)
        if entry is not None:  # else kernel 1, or transposed with kernel == stride: no past, no padding
            index, context = entry
            x = torch.cat([self._convs[index], x], dim=-1)
            self._convs[index] = x[..., -context:].clone()  # a copy: a slice would keep all of x alive
        polyphase = self._polyphase.get(module)
        if polyphase is not None:
            return _run_polyphase(x, *polyphase)
        if entry is not None and isinstance(module.conv, nn.ConvTranspose1d):
            # Outputs of the context inputs are dropped; the right end is trimmed as upstream does.
            stride = module.conv.stride[0]
            return module.conv(x)[..., context * stride : x.shape[-1] * stride]
        return module.conv(x)

    def _convnext(self, block: Any, hidden: torch.Tensor) -> torch.Tensor:
        """Qwen3TTSTokenizerV2ConvNeXtBlock.forward with a stateful depthwise conv."""
        out = self._conv(block.dwconv, hidden).permute(0, 2, 1)
        out = block.pwconv2(block.act(block.pwconv1(block.norm(out))))
        return hidden + (block.gamma * out).permute(0, 2, 1)

    def _attend(self, hidden: torch.Tensor) -> torch.Tensor:
        """The pre_transformer on hidden [1, T, latent] with a sliding-window KV cache."""
        transformer = self._transformer
        length = hidden.shape[1]
        hidden = transformer.input_proj(hidden)
        device = hidden.device
        positions = torch.arange(self.frames, self.frames + length, device=device).unsqueeze(0)
        cos, sin = transformer.rotary_emb(hidden, positions)
        cached = self._keys[0].shape[2]
        # Query t may see cached key j - cached <= t and > t - window (transformers' sliding-window mask).
        offset = torch.arange(-cached, length, device=device) - torch.arange(length, device=device)[:, None]
        mask = None if length == 1 else (offset <= 0) & (offset > -self._window)
        shape = (1, length, -1, self._head_dim)
        keep = self._window - 1
        for index, layer in enumerate(self._layers):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            query = attn.q_norm(attn.q_proj(x).view(shape)).transpose(1, 2)
            key = attn.k_norm(attn.k_proj(x).view(shape)).transpose(1, 2)
            value = attn.v_proj(x).view(shape).transpose(1, 2)
            query, key = self._apply_rope(query, key, cos, sin)
            key = torch.cat([self._keys[index], key], dim=2)
            value = torch.cat([self._values[index], value], dim=2)
            self._keys[index] = key[:, :, -keep:]
            self._values[index] = value[:, :, -keep:]
            # Grouped key/value heads are attended without repeating them, as in engine/loop.py.
            out = F.scaled_dot_product_attention(
                query, key, value, attn_mask=mask, scale=attn.scaling, enable_gqa=True
            )
            out = attn.o_proj(out.transpose(1, 2).reshape(1, length, -1))
            hidden = hidden + layer.self_attn_layer_scale(out)
            hidden = hidden + layer.mlp_layer_scale(layer.mlp(layer.post_attention_layernorm(hidden)))
        return transformer.output_proj(transformer.norm(hidden))


def _snake(act: Any, x: torch.Tensor) -> torch.Tensor:
    """SnakeBeta.forward, x + sin(x * alpha)^2 / beta, with one allocation instead of five (same values)."""
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
    """Apply _polyphase_weights to x [1, C_in, T] (kernel 2s: past input, then T new): [1, C_out, T * s]."""
    steps = x[0].t()  # [T, C_in]
    if matrix.shape[0] != steps.shape[1]:  # kernel 2s: each step beside the one before it
        steps = torch.cat([steps[1:], steps[:-1]], dim=1)  # [T, 2 * C_in]: current, previous
    out = torch.addmm(bias, steps, matrix)  # [T, s * C_out], ordered (phase, channel)
    length = steps.shape[0]
    return out.view(length, stride, -1).permute(2, 0, 1).reshape(1, -1, length * stride)


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
    return module.padding  # (kernel_size - 1) * dilation

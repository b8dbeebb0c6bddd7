"""Our own generation loop: talker step -> code predictor -> one frame of 16 codes, yielded at once.

qwen-tts nests a Hugging Face generate() for the code predictor inside every
talker step and returns codes only when the utterance is done. Here both
transformer stacks run on the qwen-tts modules' own weights through a lean
step with preallocated KV caches, and each frame is yielded as soon as its
16 codes exist, so audio can be decoded while the rest is still generated.

The prompt (speaker, language, text embeddings) is built by qwen-tts itself:
`capture_prompt` runs its generate_* call up to the point where it would
start the talker's generate() and takes the embeddings it prepared.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Qwen3-TTS suppresses the talker's top 1024 ids (control tokens) except EOS, and EOS in the first frames.
CONTROL_TOKENS = 1024
MIN_FRAMES = 2


@dataclass(frozen=True)
class SamplingOptions:
    """How codes are drawn: the talker's (codebook 0) and the code predictor's (codebooks 1..15)."""

    do_sample: bool = True
    top_k: int = 50
    top_p: float = 1.0
    temperature: float = 0.9
    repetition_penalty: float = 1.05
    subtalker_do_sample: bool = True
    subtalker_top_k: int = 50
    subtalker_top_p: float = 1.0
    subtalker_temperature: float = 0.9

    @classmethod
    def from_generate_kwargs(cls, kwargs: dict[str, Any]) -> SamplingOptions:
        """Read the options qwen-tts merged from generation_config.json and the call."""
        return cls(
            do_sample=bool(kwargs.get("do_sample", True)),
            top_k=int(kwargs.get("top_k", 50)),
            top_p=float(kwargs.get("top_p", 1.0)),
            temperature=float(kwargs.get("temperature", 0.9)),
            repetition_penalty=float(kwargs.get("repetition_penalty", 1.05)),
            subtalker_do_sample=bool(kwargs.get("subtalker_dosample", True)),
            subtalker_top_k=int(kwargs.get("subtalker_top_k", 50)),
            subtalker_top_p=float(kwargs.get("subtalker_top_p", 1.0)),
            subtalker_temperature=float(kwargs.get("subtalker_temperature", 0.9)),
        )


@dataclass
class TalkerPrompt:
    """What the talker starts from: prompt embeddings, text still to be fed one per frame, the pad."""

    embeds: torch.Tensor  # [1, T, H]
    trailing_text: torch.Tensor  # [1, N, H]
    pad_embed: torch.Tensor  # [1, 1, H]
    sampling: SamplingOptions


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


@dataclass
class KVCache:
    """Keys and values [1, kv_heads, max_len, head_dim] per layer, written in place step by step."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]


LinearFactory = Callable[[nn.Linear], nn.Module]


def keep_float(linear: nn.Linear) -> nn.Module:
    """The default LinearFactory: run the layer as it is."""
    return linear


def fuse_linears(linears: list[nn.Linear]) -> nn.Linear:
    """One Linear computing several that share an input (q/k/v, gate/up): one weight read, one call."""
    first = linears[0]
    fused = nn.Linear(
        first.in_features, sum(lin.out_features for lin in linears), bias=first.bias is not None
    )
    fused = fused.to(first.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([lin.weight for lin in linears]))
        if first.bias is not None:
            fused.bias.copy_(torch.cat([lin.bias for lin in linears]))
    return fused


class _MovedToStepLayer(nn.Module):
    """Stands where a projection was before StepLayer took (and fused) its weights."""

    def forward(self, *args: Any) -> Any:
        raise RuntimeError("this projection's weights now live in the engine's StepLayer")


class _Norm:
    """A qwen-tts RMSNorm as one fused call (it casts to float32 and back: six ops per call)."""

    def __init__(self, norm: Any) -> None:
        self.weight = norm.weight
        self.eps = norm.variance_epsilon
        self.shape = tuple(norm.weight.shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.shape, self.weight, self.eps)


class StepLayer:
    """One qwen-tts decoder layer's weights, fused and prepared for token-by-token steps.

    q/k/v and gate/up projections are fused into one matrix each; the layer's
    original projections are released so the weights exist once.
    """

    def __init__(self, layer: Any, make_linear: LinearFactory) -> None:
        attn = layer.self_attn
        mlp = layer.mlp
        self.input_norm = _Norm(layer.input_layernorm)
        self.post_norm = _Norm(layer.post_attention_layernorm)
        self.q_heads = attn.q_proj.out_features // attn.head_dim
        self.kv_heads = attn.k_proj.out_features // attn.head_dim
        # The per-head q and k norms as one: normalise all q and k heads at once, then scale each head
        # by its own weights (rows of q_norm's, then rows of k_norm's).
        self.qk_norm_weight = torch.cat(
            [
                attn.q_norm.weight.detach().expand(self.q_heads, -1),
                attn.k_norm.weight.detach().expand(self.kv_heads, -1),
            ]
        )
        self.qk_norm_eps = attn.q_norm.variance_epsilon
        if attn.k_norm.variance_epsilon != self.qk_norm_eps:
            raise ValueError("q_norm and k_norm with different epsilons")
        self.act = mlp.act_fn
        self.intermediate = mlp.gate_proj.out_features
        self.qkv = make_linear(fuse_linears([attn.q_proj, attn.k_proj, attn.v_proj]))
        self.o = make_linear(attn.o_proj)
        self.gate_up = make_linear(fuse_linears([mlp.gate_proj, mlp.up_proj]))
        self.down = make_linear(mlp.down_proj)
        for owner, names in (
            (attn, ("q_proj", "k_proj", "v_proj", "o_proj")),
            (mlp, ("gate_proj", "up_proj", "down_proj")),
        ):
            for name in names:
                setattr(owner, name, _MovedToStepLayer())


class DecoderStack:
    """A stack of qwen-tts decoder layers run step by step with a preallocated KV cache.

    Both the talker and the code predictor use layers of the same shape
    (RMSNorm, attention with per-head q/k norms and RoPE, gated MLP). Attention
    runs through scaled_dot_product_attention with grouped key/value heads, so
    the KV heads are never repeated in memory.
    """

    def __init__(
        self,
        layers: Any,
        norm: Any,
        cos: torch.Tensor,
        sin: torch.Tensor,
        make_linear: LinearFactory = keep_float,
    ) -> None:
        attn = layers[0].self_attn
        self.head_dim = attn.head_dim
        self.kv_heads = attn.k_proj.out_features // attn.head_dim
        self.scaling = attn.scaling
        self.dtype = layers[0].input_layernorm.weight.dtype
        self.layers = [StepLayer(layer, make_linear) for layer in layers]
        self.norm = norm
        self.cos = cos  # [max_positions, head_dim]
        # RoPE's x * cos + rotate_half(x) * sin, with rotate_half(x) = [-x2, x1], is computed as
        # x * cos + roll(x, half) * signed_sin: the sign moves into the table, 3 ops instead of 7.
        half = self.head_dim // 2
        self.signed_sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)

    def new_cache(self, max_len: int) -> KVCache:
        """An uninitialised cache for max_len positions; each utterance owns one."""
        if max_len > self.cos.shape[0]:
            raise ValueError(f"{max_len} positions exceed the rotary table of {self.cos.shape[0]}")
        shape = (1, self.kv_heads, max_len, self.head_dim)
        return KVCache(
            [torch.empty(shape, dtype=self.dtype) for _ in self.layers],
            [torch.empty(shape, dtype=self.dtype) for _ in self.layers],
        )

    def forward(self, x: torch.Tensor, start: int, cache: KVCache) -> torch.Tensor:
        """Run x [1, n, H] at positions start..start+n-1; return the normed hidden states."""
        n = x.shape[1]
        end = start + n
        if n > 1 and start != 0:
            raise ValueError("multi-token steps only at the start of a sequence")
        cos = self.cos[start:end]
        signed_sin = self.signed_sin[start:end]
        hd = self.head_dim
        half = hd // 2
        # Every step runs ~50 small ops per layer, 103 layer steps per frame: each op saved counts.
        for layer, keys, values in zip(self.layers, cache.keys, cache.values, strict=True):
            heads = layer.qkv(layer.input_norm(x)).view(1, n, -1, hd)  # q heads, k heads, v heads
            qk_heads = layer.q_heads + layer.kv_heads
            qk = F.rms_norm(heads[:, :, :qk_heads], (hd,), None, layer.qk_norm_eps) * layer.qk_norm_weight
            qk = qk.transpose(1, 2)
            qk = torch.addcmul(qk * cos, qk.roll(half, -1), signed_sin)
            q = qk[:, : layer.q_heads]
            keys[:, :, start:end] = qk[:, layer.q_heads :]
            values[:, :, start:end] = heads[:, :, qk_heads:].transpose(1, 2)
            out = F.scaled_dot_product_attention(
                q, keys[:, :, :end], values[:, :, :end], is_causal=n > 1, scale=self.scaling, enable_gqa=True
            )
            x = x + layer.o(out.transpose(1, 2).reshape(1, n, -1))
            gate, up = layer.gate_up(layer.post_norm(x)).split(layer.intermediate, dim=-1)
            x = x + layer.down(layer.act(gate) * up)
        return self.norm(x)


def _rotary_table(rotary: Any, positions: int, dtype: torch.dtype, rows: int | None) -> tuple:
    """cos/sin [positions, head_dim] from a qwen-tts rotary module.

    The talker's multimodal RoPE takes three rows of position ids; for speech and
    text all three are equal, so every section of it equals the first row.
    """
    pos = torch.arange(positions)
    probe = torch.empty(0, dtype=dtype)
    if rows:
        cos, sin = rotary(probe, pos.view(1, 1, -1).expand(rows, 1, -1))
        if not (torch.equal(cos[0], cos[-1]) and torch.equal(sin[0], sin[-1])):
            raise RuntimeError("multimodal RoPE sections differ for equal positions")
        return cos[0, 0], sin[0, 0]
    cos, sin = rotary(probe, pos.view(1, -1))
    return cos[0], sin[0]


def _pick(logits: torch.Tensor, do_sample: bool, top_k: int, top_p: float, temperature: float, rng) -> int:
    """Draw one id from [V] float logits the way Hugging Face's warpers do (or take the argmax)."""
    if not do_sample:
        return int(torch.argmax(logits))
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        remove = cumulative <= 1 - top_p
        remove[-1] = False
        logits = logits.masked_fill(remove.scatter(0, order, remove), float("-inf"))
    probs = logits.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=rng))


class FrameGenerator:
    """Turns a TalkerPrompt into frames of 16 codes, one talker step + 15 predictor steps per frame."""

    def __init__(
        self, model: nn.Module, make_linear: LinearFactory = keep_float, max_positions: int = 8192
    ) -> None:
        talker = model.talker
        config = talker.config
        self.eos = config.codec_eos_token_id
        self.vocab_size = config.vocab_size
        self.num_groups = config.num_code_groups
        self.talker = talker
        self.codec_embedding = talker.model.codec_embedding
        # The heads are replaced in the model too, so the originals are released.
        talker.codec_head = self.codec_head = make_linear(talker.codec_head)
        predictor = talker.code_predictor
        self.predictor_embeddings = list(predictor.model.codec_embedding)
        self.predictor_heads = [make_linear(head) for head in predictor.lm_head]
        predictor.lm_head = nn.ModuleList(self.predictor_heads)
        projection = predictor.small_to_mtp_projection
        if isinstance(projection, nn.Linear):
            predictor.small_to_mtp_projection = projection = make_linear(projection)
        self.to_predictor = projection
        dtype = talker.model.norm.weight.dtype
        self.dtype = dtype
        with torch.inference_mode():
            cos, sin = _rotary_table(talker.model.rotary_emb, max_positions, dtype, rows=3)
            self.talker_stack = DecoderStack(talker.model.layers, talker.model.norm, cos, sin, make_linear)
            cos, sin = _rotary_table(predictor.model.rotary_emb, self.num_groups + 1, dtype, rows=None)
            self.predictor_stack = DecoderStack(
                predictor.model.layers, predictor.model.norm, cos, sin, make_linear
            )
        suppressed = torch.zeros(self.vocab_size, dtype=torch.bool)
        suppressed[self.vocab_size - CONTROL_TOKENS :] = True
        suppressed[self.eos] = False
        self.suppressed = suppressed

    def _talker_logits(
        self, hidden: torch.Tensor, history: list[int], sampling: SamplingOptions
    ) -> torch.Tensor:
        logits = self.codec_head(hidden[0, -1]).float()
        if sampling.repetition_penalty != 1.0 and history:
            seen = torch.tensor(sorted(set(history)))
            scores = logits[seen]
            logits[seen] = torch.where(
                scores < 0, scores * sampling.repetition_penalty, scores / sampling.repetition_penalty
            )
        logits = logits.masked_fill(self.suppressed, float("-inf"))
        if len(history) < MIN_FRAMES:
            logits[self.eos] = float("-inf")
        return logits

    def _predict_rest(
        self,
        hidden: torch.Tensor,
        code0: int,
        sampling: SamplingOptions,
        rng,
        cache: KVCache,
        forced: list[int] | None = None,
        record: list[torch.Tensor] | None = None,
    ) -> list[int]:
        """Codebooks 1..15 for one frame from the talker's hidden state and codebook 0.

        forced, if given, replaces the drawn codes (teacher forcing); record collects the logits.
        """
        stack = self.predictor_stack
        first = self.codec_embedding(torch.tensor([[code0]]))
        x = self.to_predictor(torch.cat((hidden, first), dim=1))
        out = stack.forward(x, 0, cache)
        codes = []
        for group in range(self.num_groups - 1):
            logits = self.predictor_heads[group](out[0, -1]).float()
            if record is not None:
                record.append(logits)
            if forced is not None:
                code = forced[group]
            else:
                code = _pick(
                    logits,
                    sampling.subtalker_do_sample,
                    sampling.subtalker_top_k,
                    sampling.subtalker_top_p,
                    sampling.subtalker_temperature,
                    rng,
                )
            codes.append(code)
            if group == self.num_groups - 2:
                break
            x = self.to_predictor(self.predictor_embeddings[group](torch.tensor([[code]])))
            out = stack.forward(x, group + 2, cache)
        return codes

    @torch.inference_mode()
    def frames(
        self,
        prompt: TalkerPrompt,
        max_frames: int,
        seed: int | None = None,
        forced: torch.Tensor | None = None,
        record: list[torch.Tensor] | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield one LongTensor [16] per frame until EOS or max_frames.

        forced [frames, 16] makes every code the given one (teacher forcing, to compare the
        logits of two precisions on the same path); record then collects all logits, in order.
        """
        if forced is not None:
            max_frames = min(max_frames, forced.shape[0])
        sampling = prompt.sampling
        rng = None
        if seed is not None:
            rng = torch.Generator().manual_seed(seed)
        embeds = prompt.embeds.to(self.dtype)
        trailing = prompt.trailing_text.to(self.dtype)
        pad = prompt.pad_embed.to(self.dtype)
        prompt_len = embeds.shape[1]
        talker_cache = self.talker_stack.new_cache(prompt_len + max_frames + 1)
        predictor_cache = self.predictor_stack.new_cache(self.num_groups + 1)
        hidden = self.talker_stack.forward(embeds, 0, talker_cache)[:, -1:]
        history: list[int] = []
        position = prompt_len
        for step in range(max_frames):
            logits = self._talker_logits(hidden, history, sampling)
            if record is not None:
                record.append(logits)
            if forced is not None:
                code0 = int(forced[step, 0])
            else:
                code0 = _pick(
                    logits, sampling.do_sample, sampling.top_k, sampling.top_p, sampling.temperature, rng
                )
            if code0 == self.eos:
                return
            history.append(code0)
            rest = self._predict_rest(
                hidden,
                code0,
                sampling,
                rng,
                predictor_cache,
                None if forced is None else forced[step, 1:].tolist(),
                record,
            )
            yield torch.tensor([code0, *rest])
            if step == max_frames - 1:
                return
            x = self.codec_embedding(torch.tensor([[code0]]))
            for group, code in enumerate(rest):
                x = x + self.predictor_embeddings[group](torch.tensor([[code]]))
            x = x + (trailing[:, step : step + 1] if step < trailing.shape[1] else pad)
            hidden = self.talker_stack.forward(x, position, talker_cache)
            position += 1

"""The PyTorch backend's steps: qwen-tts's decoder layers run token by token with preallocated KV caches.

Both transformer stacks (the talker and the code predictor) run on the
qwen-tts modules' own weights, fused (q/k/v, gate/up) and optionally turned
into int8 layers by a LinearFactory (quantize.py). `TorchSteps` puts them
behind the step interface, `ModelSteps` of engine/seams.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..seams import CodeLayout, ModelSteps
from .prefixes import MIN_PREFIX, PrefixStore


@dataclass
class KVCache:
    """Keys and values [1, kv_heads, max_len, head_dim] per layer, written in place step by step."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]


LinearFactory = Callable[[nn.Linear], nn.Module]
# (x [B, 1, H], position, keys per layer, values per layer) -> normed hidden states [B, 1, H]
# (layer index, q and k heads after RoPE [B, heads, n, D], q heads, new values [B, kv, n, D]) -> attention
# output [B, q heads, n, D]: writes the new keys and values into the cache and attends over it.
Attend = Callable[[int, torch.Tensor, int, torch.Tensor], torch.Tensor]
OneTokenStep = Callable[[torch.Tensor, int, list[torch.Tensor], list[torch.Tensor]], torch.Tensor]
# (x [B, 1, H], cos, signed sin, cache views) -> normed hidden states [B, 1, H]: see DecoderStack.on_views.
ViewsStep = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]], torch.Tensor]


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
    """A qwen-tts RMSNorm in four ops: x * (w * sqrt(N)) / hypot(|x|, sqrt(N * eps)).

    That is x * rsqrt(mean(x^2) + eps) * w rearranged, so the mean and the epsilon fold into one vector
    norm and one hypot: in a traced step 3.6 us a call against 9.5 for F.rms_norm, which dispatches
    about eight small ops (three norms a layer, 103 layer steps a frame). Computed in float32, as
    qwen-tts computes its norms.
    """

    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        self.original = weight.detach()  # [N], or one row per head for the q/k norms
        self.eps = eps
        self.width = weight.shape[-1]
        self.weight = self.original.float() * self.width**0.5  # a traced step takes it as a constant
        self.floor = torch.tensor((self.width * eps) ** 0.5)

    @classmethod
    def of(cls, norm: Any) -> _Norm:
        return cls(norm.weight, norm.variance_epsilon)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        length = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)
        out = (x * self.weight).div_(torch.hypot(length, self.floor))
        return out if out.dtype == x.dtype else out.to(x.dtype)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The norm as F.rms_norm computes it (the OpenVINO export's form, which its converter knows)."""
        if self.original.dim() == 1:
            return F.rms_norm(x, (self.width,), self.original, self.eps)
        return F.rms_norm(x, (self.width,), None, self.eps) * self.original


class StepLayer:
    """One qwen-tts decoder layer's weights, fused and prepared for token-by-token steps.

    q/k/v and gate/up projections are fused into one matrix each; the layer's
    original projections are released so the weights exist once.
    """

    def __init__(self, layer: Any, make_linear: LinearFactory) -> None:
        attn = layer.self_attn
        mlp = layer.mlp
        self.input_norm = _Norm.of(layer.input_layernorm)
        self.post_norm = _Norm.of(layer.post_attention_layernorm)
        self.q_heads = attn.q_proj.out_features // attn.head_dim
        self.kv_heads = attn.k_proj.out_features // attn.head_dim
        # The per-head q and k norms as one: normalise all q and k heads at once, each head scaled by its
        # own weights (rows of q_norm's, then rows of k_norm's).
        if attn.k_norm.variance_epsilon != attn.q_norm.variance_epsilon:
            raise ValueError("q_norm and k_norm with different epsilons")
        self.qk_norm = _Norm(
            torch.cat(
                [
                    attn.q_norm.weight.detach().expand(self.q_heads, -1),
                    attn.k_norm.weight.detach().expand(self.kv_heads, -1),
                ]
            ),
            attn.q_norm.variance_epsilon,
        )
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

    @property
    def linears(self) -> tuple[nn.Module, ...]:
        """The layer's four products, in the order they run: q/k/v, o, gate/up, down."""
        return (self.qkv, self.o, self.gate_up, self.down)


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
        self.norm = _Norm.of(norm)
        self.cos = cos  # [max_positions, head_dim]
        # RoPE's x * cos + rotate_half(x) * sin, with rotate_half(x) = [-x2, x1], is computed as
        # x * cos + roll(x, half) * signed_sin: the sign moves into the table, 3 ops instead of 7.
        half = self.head_dim // 2
        self.signed_sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
        # The step generation repeats; compiled_steps.py may put a compiled one here, and traced_steps.py
        # a recorded one in on_views; fused_steps.py one call of our own operator for every one-token step.
        self.one_token: OneTokenStep = self.eager_one_token
        self.on_views: ViewsStep = self.eager_on_views
        self.fused: Any = None  # a fused_steps.FusedStep

    def new_cache(self, max_len: int, rows: int = 1) -> KVCache:
        """An uninitialised cache for max_len positions of `rows` sequences that step together."""
        if max_len > self.cos.shape[0]:
            raise ValueError(f"{max_len} positions exceed the rotary table of {self.cos.shape[0]}")
        shape = (rows, self.kv_heads, max_len, self.head_dim)
        return KVCache(
            [torch.empty(shape, dtype=self.dtype) for _ in self.layers],
            [torch.empty(shape, dtype=self.dtype) for _ in self.layers],
        )

    def forward(self, x: torch.Tensor, start: int, cache: KVCache) -> torch.Tensor:
        """Run x [B, n, H] at positions start..start+n-1 (B rows of one cache); return the normed hidden
        states."""
        n = x.shape[1]
        if n == 1:
            if self.fused is not None:
                return self.fused.one_cache(x, start, cache)
            if x.shape[0] == 1:
                return self.one_token(x, start, cache.keys, cache.values)
            return self.eager_one_token(x, start, cache.keys, cache.values)
        if start != 0:
            raise ValueError("multi-token steps only at the start of a sequence")
        views = [cached[:, :, :n] for pair in zip(cache.keys, cache.values, strict=True) for cached in pair]
        return self.on_views(x, self.cos[:n], self.signed_sin[:n], views)

    def eager_one_token(
        self, x: torch.Tensor, start: int, keys: list[torch.Tensor], values: list[torch.Tensor]
    ) -> torch.Tensor:
        """One token at position start for the B rows of one cache (what --compile compiles; prompts stay
        uncompiled)."""
        end = start + 1
        views = [cached[:, :, :end] for pair in zip(keys, values, strict=True) for cached in pair]
        return self.on_views(x, self.cos[start:end], self.signed_sin[start:end], views)

    def rows_one_token(self, x: torch.Tensor, starts: list[int], caches: list[KVCache]) -> torch.Tensor:
        """One token for each of B sequences [B, 1, H], each at its own position with its own cache.

        The projections and MLPs, which hold the weights, run once for all rows (one read of the
        weights); attention runs row by row on each row's cache.
        """
        if self.fused is not None:
            return self.fused.caches(x, starts, caches)
        if len(caches) == 1:
            return self.one_token(x, starts[0], caches[0].keys, caches[0].values)
        rows = x.shape[0]
        positions = torch.tensor(starts)
        views = [
            cached[:, :, : start + 1]
            for index in range(len(self.layers))
            for start, cache in zip(starts, caches, strict=True)
            for cached in (cache.keys[index], cache.values[index])
        ]
        cos = self.cos[positions].view(rows, 1, 1, -1)
        return self.on_views(x, cos, self.signed_sin[positions].view(rows, 1, 1, -1), views)

    def eager_on_views(
        self, x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, views: list[torch.Tensor]
    ) -> torch.Tensor:
        """x's tokens for its B rows, written at the end of their cache views and attending over them.

        views holds, layer by layer and cache by cache, the keys and values of each cache up to and
        including the new tokens' positions. With one cache its B rows step together in it; with C caches
        (B == C) each row has its own. Several tokens only from the start of one cache (views of just
        their length: they attend causally). Only tensors and their shapes come in, no positions, so the
        same code serves every step: traced_steps.py records it once per shape.
        """
        caches = len(views) // (2 * len(self.layers))
        per_cache = x.shape[0] // caches
        n = int(x.shape[1])  # a plain int (traced: a constant of the recording, which is per shape)

        def attend(index: int, qk: torch.Tensor, q_heads: int, new_values: torch.Tensor) -> torch.Tensor:
            outs = []
            for cache in range(caches):
                keys, values = views[2 * (index * caches + cache)], views[2 * (index * caches + cache) + 1]
                rows = slice(cache * per_cache, (cache + 1) * per_cache)
                own_qk, own_values = (qk, new_values) if caches == 1 else (qk[rows], new_values[rows])
                outs.append(self._attend_at_end(keys, values, own_qk, q_heads, own_values, n))
            return outs[0] if caches == 1 else torch.cat(outs)

        return self._stack(x, cos, signed_sin, attend)

    def prompts(
        self, x: torch.Tensor, lengths: list[int], caches: list[KVCache], starts: list[int] | None = None
    ) -> torch.Tensor:
        """Several sequences' tokens, x [1, sum(lengths), H] one after another, each from its position
        in `starts` (default 0; the positions before it already in its cache) into its own cache: the
        projections and MLPs once for all their tokens (one read of the weights), attention within each
        sequence. Returns the normed hidden states [1, sum(lengths), H]."""
        starts = starts or [0] * len(lengths)
        bounds = [0]
        for length in lengths:
            bounds.append(bounds[-1] + length)
        positions = torch.cat(
            [torch.arange(start, start + length) for start, length in zip(starts, lengths, strict=True)]
        )

        def attend(index: int, qk: torch.Tensor, q_heads: int, new_values: torch.Tensor) -> torch.Tensor:
            return torch.cat(
                [
                    self._attend_at_end(
                        cache.keys[index][:, :, : start + end - begin],
                        cache.values[index][:, :, : start + end - begin],
                        qk[:, :, begin:end],
                        q_heads,
                        new_values[:, :, begin:end],
                        end - begin,
                    )
                    for begin, end, start, cache in zip(bounds[:-1], bounds[1:], starts, caches, strict=True)
                ],
                dim=2,
            )

        return self._stack(x, self.cos[positions], self.signed_sin[positions], attend)

    def _attend_at_end(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        qk: torch.Tensor,
        q_heads: int,
        new_values: torch.Tensor,
        n: int,
    ) -> torch.Tensor:
        """Write n new keys (qk's heads after the q heads) and values at the end of one layer's cache
        views, then attend the q heads over the views, causally when n > 1 (each new token sees the
        positions before the n, and the new ones up to itself)."""
        # narrow(), one op where indexing records a slice per dimension; -n counts from the end, so a
        # traced step holds no position.
        keys.narrow(2, -n, n).copy_(qk.narrow(1, q_heads, qk.shape[1] - q_heads))
        values.narrow(2, -n, n).copy_(new_values)
        before = keys.shape[2] - n  # a plain int: traced steps run one token, or two from the start
        mask = None
        if n > 1 and before:  # is_causal aligns the mask to the first key; here the new tokens are last
            mask = torch.ones(n, n + before, dtype=torch.bool).tril(before)
        return F.scaled_dot_product_attention(
            qk.narrow(1, 0, q_heads),
            keys,
            values,
            attn_mask=mask,
            is_causal=n > 1 and not before,
            scale=self.scaling,
            enable_gqa=True,
        )

    def _stack(
        self, x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, attend: Attend
    ) -> torch.Tensor:
        """Every layer on x [B, n, H]: projections, norms, RoPE (cos/sin broadcast to the rows' positions)
        and MLP for all rows at once; `attend` writes the keys and values and attends, as the caches ask."""
        rows, n = x.shape[0], x.shape[1]
        hd = self.head_dim
        half = hd // 2
        # Every step runs ~50 small ops per layer, 103 layer steps per frame: each op saved counts.
        # Modules are run by their forward(), not called: a traced step (traced_steps.py) then records
        # their operations in its own graph instead of a call into a method recorded for each linear,
        # and eager steps skip nn.Module's call machinery.
        for index, layer in enumerate(self.layers):
            heads = layer.qkv.forward(layer.input_norm(x)).view(rows, n, -1, hd)  # q, k, v heads
            qk_heads = layer.q_heads + layer.kv_heads
            qk = layer.qk_norm(heads.narrow(2, 0, qk_heads))
            qk = qk.transpose(1, 2)
            qk = torch.addcmul(qk * cos, qk.roll(half, -1), signed_sin)
            out = attend(index, qk, layer.q_heads, heads.narrow(2, qk_heads, layer.kv_heads).transpose(1, 2))
            x = x + layer.o.forward(out.transpose(1, 2).reshape(rows, n, -1))
            gate, up = layer.gate_up.forward(layer.post_norm(x)).split(layer.intermediate, dim=-1)
            x = x + layer.down.forward(layer.act.forward(gate) * up)
        return self.norm(x)


def _rotary_table(rotary: Any, positions: int, dtype: torch.dtype, rows: int | None) -> tuple:
    """cos/sin [positions, head_dim] from a qwen-tts rotary module.

    The talker's multimodal RoPE takes three rows of position ids; for speech and
    text all three are equal, so every section of it equals the first row. The
    rows are compared with a tolerance, not bit for bit: the vectorised and scalar
    cos/sin kernels round the last bit differently, and which elements each one
    computes depends on how the work is split across threads (on a busy machine,
    differently from run to run).

    The first cos a process computes can come out wrong in the rows one of torch's threads computed (by
    up to 1.5e-4, on an AMX Xeon: 5 of 22 benchmark rows one hour, 1 start of 20 the next), while a
    second cos of the same angles is exact: something the first call sets up. So every thread takes a
    cos and a sin first, and the table is computed after.
    """
    _first_transcendentals()
    pos = torch.arange(positions)
    probe = torch.empty(0, dtype=dtype)
    if rows:
        cos, sin = rotary(probe, pos.view(1, 1, -1).expand(rows, 1, -1))
        if not (_same_table(cos[0], cos[-1]) and _same_table(sin[0], sin[-1])):
            raise RuntimeError(
                "multimodal RoPE sections differ for equal positions: the talker's rotary table failed its "
                "start-up check; start again, and report it with your CPU's flags if it repeats"
            )
        return cos[0, 0], sin[0, 0]
    cos, sin = rotary(probe, pos.view(1, -1))
    return cos[0], sin[0]


def _first_transcendentals() -> None:
    """A cos and a sin on every torch thread (a tensor large enough to be split among them all), results
    dropped: what the math library sets up on its first call is done before a table is computed."""
    values = torch.linspace(0, 8192, (1 << 16) * max(1, torch.get_num_threads()))
    values.cos()
    values.sin()


def _same_table(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal but for a few units in the last place of a value in [-1, 1] (cos and sin are)."""
    return torch.allclose(a.float(), b.float(), rtol=0, atol=4 * torch.finfo(a.dtype).eps)


class TorchSteps(ModelSteps):
    """The talker and code predictor of a loaded qwen-tts model, behind the step interface.

    Takes over the model's projections (and heads): after this, qwen-tts's own
    generate() no longer runs on that model. With predictor False the code predictor's layers and heads
    are released instead (another backend runs it: engine/split_steps.py) and only the talker steps.
    """

    def __init__(
        self,
        model: nn.Module,
        make_linear: LinearFactory = keep_float,
        max_positions: int = 8192,
        predictor: bool = True,
    ) -> None:
        talker = model.talker
        config = talker.config
        self.layout = CodeLayout(
            vocab_size=config.vocab_size,
            eos=config.codec_eos_token_id,
            num_groups=config.num_code_groups,
            max_positions=max_positions,
        )
        # The heads are replaced in the model too, so the originals are released.
        talker.codec_head = self.codec_head = make_linear(talker.codec_head)
        code_predictor = talker.code_predictor
        dtype = talker.model.norm.weight.dtype
        self.dtype = dtype
        with torch.inference_mode():
            cos, sin = _rotary_table(talker.model.rotary_emb, max_positions, dtype, rows=3)
            self.talker_stack = DecoderStack(talker.model.layers, talker.model.norm, cos, sin, make_linear)
        self.prefixes = PrefixStore()  # the talker's keys and values of voices' prompt beginnings
        if not predictor:
            code_predictor.model.layers = nn.ModuleList()
            code_predictor.lm_head = nn.ModuleList()
            code_predictor.small_to_mtp_projection = nn.Identity()
            return
        self.predictor_heads = [make_linear(head) for head in code_predictor.lm_head]
        code_predictor.lm_head = nn.ModuleList(self.predictor_heads)
        projection = code_predictor.small_to_mtp_projection
        if isinstance(projection, nn.Linear):
            code_predictor.small_to_mtp_projection = projection = make_linear(projection)
        self.to_predictor = projection
        predictor_model = code_predictor.model
        with torch.inference_mode():
            cos, sin = _rotary_table(predictor_model.rotary_emb, self.layout.num_groups + 1, dtype, rows=None)
            self.predictor_stack = DecoderStack(
                predictor_model.layers, predictor_model.norm, cos, sin, make_linear
            )

    def new_talker_cache(self, max_len: int) -> KVCache:
        return self.talker_stack.new_cache(max_len)

    def talker(self, embeds: torch.Tensor, start: int, cache: KVCache) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.talker_stack.forward(embeds.to(self.dtype), start, cache)[:, -1:]
        return self.codec_head(hidden[0, -1]).float(), hidden

    def talker_rows(
        self, embeds: torch.Tensor, starts: list[int], caches: list[KVCache]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.talker_stack.rows_one_token(embeds.to(self.dtype), starts, caches)
        return self.codec_head(hidden[:, -1]).float(), hidden

    def talker_prompts(
        self, prompts: list[torch.Tensor], caches: list[KVCache], shared: list[int] | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The prompts through the talker in one call; the first shared[i] positions of prompt i, where
        they were seen before, copied from the prefix store instead of being computed (prefixes.py)."""
        starts = [0] * len(prompts)
        fresh: list[tuple[int, int]] = []  # (prompt, shared positions) to keep once computed
        for index, (prompt, cache) in enumerate(zip(prompts, caches, strict=True)):
            # The last position is always computed: its logits and hidden state are what a prompt gives.
            length = min(shared[index] if shared else 0, prompt.shape[1] - 1)
            if length < MIN_PREFIX:
                continue
            prefix = self.prefixes.find(prompt[:, :length])
            if prefix is None:
                fresh.append((index, length))
                continue
            for cached, kept in zip(
                [*cache.keys, *cache.values], [*prefix.keys, *prefix.values], strict=True
            ):
                cached[:, :, :length].copy_(kept)
            starts[index] = length
        if len(prompts) == 1 and not starts[0]:
            results = [self.talker(prompts[0], 0, caches[0])]
        else:
            lengths = [prompt.shape[1] - start for prompt, start in zip(prompts, starts, strict=True)]
            joined = torch.cat(
                [prompt[:, start:] for prompt, start in zip(prompts, starts, strict=True)], dim=1
            )
            hidden = self.talker_stack.prompts(joined.to(self.dtype), lengths, caches, starts)
            last = hidden[0, torch.tensor(lengths).cumsum(0) - 1]  # [B, H]: each prompt's last position
            logits = self.codec_head(last).float()
            results = [(logits[row], last[row].view(1, 1, -1)) for row in range(len(prompts))]
        for index, length in fresh:
            cache = caches[index]
            self.prefixes.keep(
                prompts[index][:, :length],
                [keys[:, :, :length] for keys in cache.keys],
                [values[:, :, :length] for values in cache.values],
            )
        return results

    def new_predictor_cache(self) -> KVCache:
        return self.predictor_stack.new_cache(self.layout.num_groups + 1)

    def new_predictor_rows(self, rows: int) -> KVCache:
        return self.predictor_stack.new_cache(self.layout.num_groups + 1, rows)

    def predictor(self, embeds: torch.Tensor, start: int, cache: KVCache, group: int) -> torch.Tensor:
        return self.predictor_rows(embeds, start, cache, group)[0]

    def predictor_rows(self, embeds: torch.Tensor, start: int, cache: KVCache, group: int) -> torch.Tensor:
        x = self.to_predictor(embeds.to(self.dtype))
        out = self.predictor_stack.forward(x, start, cache)
        return self.predictor_heads[group](out[:, -1]).float()

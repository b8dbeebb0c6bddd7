"""The talker and code-predictor steps as traceable torch modules, for conversion to OpenVINO.

The PyTorch backend writes keys and values into preallocated caches in place;
a converted graph instead takes each layer's past keys and values as inputs
and returns them with the new ones appended. `make_stateful` (in export.py)
then turns those pairs into OpenVINO state, which the CPU plugin updates in
place with its fused attention. Each module does the same math as
torch_steps.DecoderStack.forward (tests/test_openvino.py compares their codes and logits);
the position of a step is the length of its past, so no position input exists.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..pytorch.steps import DecoderStack


def kv_names(layers: int) -> list[tuple[str, str]]:
    """(input, output) names of each layer's keys and values, in the order the modules take them."""
    return [(f"past_{kind}_{i}", f"present_{kind}_{i}") for i in range(layers) for kind in ("key", "value")]


class StackStep(nn.Module):
    """A DecoderStack (fused float weights) as one graph: embeds + past KV -> head logits, hidden, KV.

    heads: one Linear (the talker's codec head) or None (the predictor: hidden
    only, its 15 heads are graphs of their own). projection: the predictor's
    small_to_mtp_projection, applied to the input.
    """

    def __init__(self, stack: DecoderStack, head: nn.Module | None, projection: nn.Module | None) -> None:
        super().__init__()
        self.stack = stack
        self.head = head
        self.projection = projection if projection is not None else nn.Identity()
        self.layer_modules = nn.ModuleList(
            nn.ModuleDict({"qkv": layer.qkv, "o": layer.o, "gate_up": layer.gate_up, "down": layer.down})
            for layer in stack.layers
        )
        self.register_buffer("cos", stack.cos.float(), persistent=False)
        self.register_buffer("signed_sin", stack.signed_sin.float(), persistent=False)

    def forward(self, embeds: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        stack = self.stack
        x = self.projection(embeds)
        rows, n = x.shape[0], x.shape[1]
        past_len = past[0].shape[2]
        positions = torch.arange(n) + past_len
        cos = self.cos[positions]
        signed_sin = self.signed_sin[positions]
        # Query i (at past_len + i) sees every key up to its own position.
        mask = torch.arange(past_len + n)[None, :] <= positions[:, None]
        hd = stack.head_dim
        half = hd // 2
        present: list[torch.Tensor] = []
        for index, (layer, modules) in enumerate(zip(stack.layers, self.layer_modules, strict=True)):
            heads = modules["qkv"](layer.input_norm.reference(x)).view(rows, n, -1, hd)
            qk_heads = layer.q_heads + layer.kv_heads
            qk = layer.qk_norm.reference(heads[:, :, :qk_heads])
            qk = qk.transpose(1, 2)
            qk = qk * cos + torch.roll(qk, half, -1) * signed_sin
            q = qk[:, : layer.q_heads]
            keys = torch.cat((past[2 * index], qk[:, layer.q_heads :]), dim=2)
            values = torch.cat((past[2 * index + 1], heads[:, :, qk_heads:].transpose(1, 2)), dim=2)
            present += [keys, values]
            groups = layer.q_heads // layer.kv_heads
            # Grouped KV heads repeated as views: the form OpenVINO's attention fusion recognises.
            out = F.scaled_dot_product_attention(
                q,
                _repeat_kv(keys, groups),
                _repeat_kv(values, groups),
                attn_mask=mask,
                scale=stack.scaling,
            )
            x = x + modules["o"](out.transpose(1, 2).reshape(rows, n, -1))
            gate, up = modules["gate_up"](layer.post_norm.reference(x)).split(layer.intermediate, dim=-1)
            x = x + modules["down"](layer.act(gate) * up)
        hidden = stack.norm.reference(x)[:, -1:]
        if self.head is None:
            return (hidden, *present)
        return (self.head(hidden[:, 0]), hidden, *present)


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[1, kv, T, d] -> [1, kv * groups, T, d], each KV head serving `groups` query heads."""
    if groups == 1:
        return x
    b, kv, t, d = x.shape
    return x[:, :, None].expand(b, kv, groups, t, d).reshape(b, kv * groups, t, d)

"""Export-friendly wrappers around a loaded :class:`MagmaForCausalLM`.

The stock modules (timm ConvNeXt tower, projector, transformers ``LlamaDecoderLayer``)
own the weights; these wrappers only re-wire the language model into the two graphs a
compiled runtime needs, with the KV cache as explicit tensors instead of a
``DynamicCache`` object:

* :class:`VisionGraph` ``pixel_values (crops, 3, S, S) -> image_features (crops, g, g, H)``
  (tower + projector, each crop on its own; tiling and row separators stay on the host).
* :class:`PrefillGraph` ``inputs_embeds (1, L, H) -> action_logits (1, 256), hidden (1, H),
  present.{i}.{key,value} (1, kv_heads, L, head_dim)``.
* :class:`DecodeGraph` ``inputs_embeds (1, 1, H), past.{i}.{key,value} (1, kv_heads, P, d)
  -> action_logits, hidden, present.{i}.{key,value} (1, kv_heads, P + 1, d)``; the new
  token's position is ``P`` (read from the cache's shape, so no position input).
* :class:`HeadGraph` ``hidden (N, H) -> logits (N, vocab)``: the full head, used only for
  free-text answers (Trace-of-Mark), never on the action path.

``action_logits`` multiplies only the 256 action rows of ``lm_head`` (the tokenizer's
action range), so the action path never computes the full vocabulary. Attention is
written out (RMSNorm and MLP are the stock modules): grouped-query attention without
repeating the KV heads, a causal mask in prefill, none in decode (one new token sees the
whole cache), rotary embeddings from the model's own ``inv_freq`` (any RoPE scaling is
already folded into it). Equality with the PyTorch path is tested.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from magma_ros.model.modeling import MagmaForCausalLM
from magma_ros.model.tokenizer import ActionTokenRange


class VisionGraph(nn.Module):
    """Tower + projector per crop: ``(crops, 3, S, S) -> (crops, g, g, hidden)``."""

    def __init__(self, model: MagmaForCausalLM) -> None:
        super().__init__()
        self.vision_tower = model.vision_tower
        self.multi_modal_projector = model.multi_modal_projector

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.multi_modal_projector(self.vision_tower(pixel_values))


class _LanguageGraph(nn.Module):
    """The LLaMA body with an explicit KV cache, the action head and the last hidden state."""

    def __init__(self, model: MagmaForCausalLM, token_range: ActionTokenRange) -> None:
        super().__init__()
        lm = model.language_model
        cfg = lm.config
        self.layers = nn.ModuleList(list(lm.model.layers[: cfg.num_hidden_layers]))
        self.norm = lm.model.norm
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scale = self.head_dim ** -0.5
        rotary = lm.model.rotary_emb
        if rotary.inv_freq.is_meta:  # built on the meta device: recompute the (small) frequencies
            rotary = LlamaRotaryEmbedding(config=cfg)
        self.register_buffer("inv_freq", rotary.inv_freq.detach().clone(), persistent=False)
        self.attention_scaling = float(getattr(rotary, "attention_scaling", 1.0))
        # only the action rows: (256, hidden)
        self.action_head = nn.Parameter(lm.lm_head.weight[token_range.lo: token_range.hi + 1].detach(),
                                        requires_grad=False)

    def _rotary(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self.inv_freq.to(device=positions.device, dtype=torch.float32)
        freqs = positions.to(torch.float32)[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)[None]  # (1, q, d)
        return (emb.cos() * self.attention_scaling).to(dtype), (emb.sin() * self.attention_scaling).to(dtype)

    def _attention(self, layer: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   past: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        attn = layer.self_attn
        q_len = x.shape[1]
        q = attn.q_proj(x).view(1, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(1, q_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(1, q_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if past is not None:
            k = torch.cat((past[0], k), dim=2)
            v = torch.cat((past[1], v), dim=2)
        groups = self.num_heads // self.num_kv_heads
        # (1, kv, groups, q, d) against (1, kv, 1, S, d): grouped-query attention without repeating K/V
        qg = q.reshape(1, self.num_kv_heads, groups, q_len, self.head_dim)
        scores = torch.matmul(qg, k.unsqueeze(2).transpose(-1, -2)) * self.scale
        if past is None:  # prefill: causal mask
            mask = torch.ones(q_len, q_len, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(mask, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        out = torch.matmul(probs, v.unsqueeze(2))  # (1, kv, groups, q, d)
        out = out.reshape(1, self.num_heads, q_len, self.head_dim).transpose(1, 2).reshape(1, q_len, -1)
        return attn.o_proj(out), k, v

    def run(self, inputs_embeds: torch.Tensor, past: list[tuple[torch.Tensor, torch.Tensor]] | None,
            ) -> tuple[torch.Tensor, ...]:
        q_len = inputs_embeds.shape[1]
        start = past[0][0].shape[2] if past is not None else 0
        positions = torch.arange(q_len, device=inputs_embeds.device) + start
        cos, sin = self._rotary(positions, inputs_embeds.dtype)
        hidden = inputs_embeds
        presents: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            attn_out, k, v = self._attention(layer, layer.input_layernorm(hidden), cos, sin,
                                             past[i] if past is not None else None)
            hidden = hidden + attn_out
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
            presents += [k, v]
        last = self.norm(hidden[:, -1])  # (1, hidden)
        action_logits = torch.matmul(last, self.action_head.t()).float()
        return (action_logits, last, *presents)


class PrefillGraph(_LanguageGraph):
    """``inputs_embeds (1, L, H) -> action_logits, hidden, present.{i}.key, present.{i}.value...``"""

    def forward(self, inputs_embeds: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.run(inputs_embeds, None)


class DecodeGraph(_LanguageGraph):
    """``inputs_embeds (1, 1, H), past.{i}.key, past.{i}.value... -> action_logits, hidden, present...``"""

    def forward(self, inputs_embeds: torch.Tensor, *past_flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        past = [(past_flat[2 * i], past_flat[2 * i + 1]) for i in range(len(past_flat) // 2)]
        return self.run(inputs_embeds, past)


class HeadGraph(nn.Module):
    """The full output head: ``hidden (N, H) -> logits (N, vocab)`` (free-text decoding only)."""

    def __init__(self, model: MagmaForCausalLM) -> None:
        super().__init__()
        self.lm_head = model.language_model.lm_head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()

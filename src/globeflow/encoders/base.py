"""Frozen encoders: images or texts in, (B, D) float32 embeddings out."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from globeflow.encoders.preprocess import ImageTransform

__all__ = ["Encoder", "ImageEncoder", "TextEncoder"]


class Encoder(abc.ABC):
    """A frozen backbone. ``name`` is the registry key; ``dim`` the embedding length D."""

    name: str
    kind: ClassVar[str] = ""
    dim: int
    model: nn.Module

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> Encoder:
        self.model.to(device)
        return self

    @abc.abstractmethod
    def settings(self) -> dict[str, Any]:
        """JSON description of what produced the embeddings (stored with them)."""


class ImageEncoder(Encoder):
    """Images -> embeddings: :attr:`transform` on the CPU, then :meth:`forward` batched."""

    kind = "image"
    transform: ImageTransform

    def preprocess(self, img: Image.Image) -> np.ndarray:
        """One RGB image -> (3, H, W) float32 pixels for this backbone."""
        return self.transform(img)

    @abc.abstractmethod
    def forward(self, pixels: Tensor) -> Tensor:
        """(B, 3, H, W) float32 on :attr:`device` -> (B, D) float32."""

    def encode_pixels(self, pixels: np.ndarray | Tensor) -> np.ndarray:
        """Preprocessed pixels (B, 3, H, W) -> (B, D) float32 numpy."""
        x = torch.as_tensor(pixels, dtype=torch.float32)
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"pixels: expected shape (B, 3, H, W), got {tuple(x.shape)}")
        with torch.inference_mode():
            out = self.forward(x.to(self.device))
        return out.float().cpu().numpy()

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """A batch of PIL images -> (B, D) float32."""
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encode_pixels(np.stack([self.preprocess(im) for im in images]))

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "dim": self.dim, "transform": self.transform.config()}


class TextEncoder(Encoder):
    """Texts -> embeddings (text queries for a model trained on a text-aligned space)."""

    kind = "text"

    @abc.abstractmethod
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """A batch of strings -> (B, D) float32."""

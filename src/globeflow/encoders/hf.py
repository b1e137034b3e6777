"""Backbones loaded with ``transformers`` from a hub id or a local directory.

* ``streetclip``: ``geolocal/StreetCLIP`` (CLIP ViT-L/14 at 336 px fine-tuned for
  geolocation), the vision tower's CLS token before the final LayerNorm
  (``last_hidden_state[:, 0]``), the embedding PLONK's OSV-5M models were trained on
  (diff-plonk's ``StreetClipFeatureExtractor``); CLIP preprocessing: shortest side to 336
  (bicubic), center crop 336, CLIP mean/std.
* ``clip-vit-l-14``: ``openai/clip-vit-large-patch14``, the same token at 224 px.
* ``dinov2-vitl14-reg``: ``facebook/dinov2-with-registers-large``, the normalised CLS token
  (what ``torch.hub``'s ``dinov2_vitl14_reg`` returns); PLONK's YFCC/iNat pipeline:
  largest center square, resize to 336 (bicubic), ImageNet mean/std.
"""

from __future__ import annotations

import os
from typing import Any

from torch import Tensor, nn

from globeflow.encoders.base import ImageEncoder
from globeflow.encoders.preprocess import ImageTransform

__all__ = ["CLIP_MEAN", "CLIP_STD", "IMAGENET_MEAN", "IMAGENET_STD", "HFImageEncoder"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _require_transformers():
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - transformers is a dependency of the encoders extra
        raise ImportError("this encoder needs the `transformers` package: pip install 'globeflow[encoders]'") from err
    return transformers


class HFImageEncoder(ImageEncoder):
    """A transformers vision backbone whose embedding is the CLS token of its last layer.

    ``architecture`` is ``"clip"`` (``CLIPVisionModel``) or ``"dinov2_reg"``
    (``Dinov2WithRegistersModel``). Give ``source`` (hub id or directory) to load weights,
    or ``model`` (an already built module, e.g. random weights from a small config).
    """

    def __init__(
        self,
        name: str,
        architecture: str,
        transform: ImageTransform,
        *,
        source: str | os.PathLike | None = None,
        model: nn.Module | None = None,
        device: str = "cpu",
    ) -> None:
        if (source is None) == (model is None):
            raise ValueError(f"encoder {name}: give exactly one of source= and model=")
        self.name = name
        self.architecture = architecture
        self.transform = transform
        self.source = None if source is None else os.fspath(source)
        if model is None:
            model = self._load(architecture, self.source)
        self.model = model.eval().requires_grad_(False).to(device)
        self.dim = int(self.model.config.hidden_size)

    @staticmethod
    def _load(architecture: str, source: str) -> nn.Module:
        transformers = _require_transformers()
        cls = {"clip": "CLIPVisionModel", "dinov2_reg": "Dinov2WithRegistersModel"}[architecture]
        try:
            return getattr(transformers, cls).from_pretrained(source)
        except OSError as err:
            raise OSError(
                f"cannot load {cls} from {source!r}: {err}\n"
                "Without network access, download the model on a connected machine "
                "(huggingface-cli download ID --local-dir DIR) and pass --encoder-path DIR."
            ) from None

    def forward(self, pixels: Tensor) -> Tensor:
        out = self.model(pixel_values=pixels.to(self.model.dtype))
        # Both architectures: token 0 of the last layer is CLS (registers follow it).
        return out.last_hidden_state[:, 0].float()

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "architecture": self.architecture,
            "source": self.source,
            "token": "cls",
        }

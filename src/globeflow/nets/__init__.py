"""Networks."""

from globeflow.nets.adaln_mlp import AdaLNMLP, AdaLNMLPConfig, noise_level_features

__all__ = ["AdaLNMLP", "AdaLNMLPConfig", "noise_level_features"]

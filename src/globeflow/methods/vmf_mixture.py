"""Mixture of K von Mises–Fisher distributions predicted per image (paper 000, Eq. 17, "vMFMix").

Same backbone and heads as :mod:`globeflow.methods.vmf`, with K sets of (μ, κ) and a softmax
weight head (Appendix C: K = 3). Loss −log Σ_k w_k vMF(x₀ | μ_k, κ_k) (Eq. 17, in nats); density
exact; point estimate the mean of the heaviest component.
"""

from __future__ import annotations

from typing import ClassVar

from globeflow.methods.vmf import VMFRegression

__all__ = ["VMFMixture"]


class VMFMixture(VMFRegression):
    """vMFMix with ``components`` = K (default 3, Appendix C)."""

    name: ClassVar[str] = "vmf_mixture"
    option_names: ClassVar[tuple[str, ...]] = VMFRegression.option_names + ("components",)
    default_components: ClassVar[int] = 3

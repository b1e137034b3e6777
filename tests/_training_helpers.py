"""Fake method + DDP worker for tests/test_training.py.

Importable (``FakeMethod``, ``make_data``) and runnable as a torchrun worker::

    torchrun --standalone --nproc_per_node=2 tests/_training_helpers.py OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from globeflow.io import save_weights
from globeflow.training import TrainConfig, train


class FakeNet(nn.Module):
    """Tiny conditional denoiser ``(x_t (B,3), t (B,1), emb (B,D)) -> (B,3)``.

    Has a LayerNorm (no-decay params), dropout (uses torch's global RNG, so exact
    resume must restore it) and an integer buffer (EMA must copy it).
    """

    def __init__(self, emb_dim: int = 8, hidden: int = 32, dropout: float = 0.1) -> None:
        super().__init__()
        self.inp = nn.Linear(3 + 1 + emb_dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, 3)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, xt: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        if self.training:
            self.calls += 1
        h = torch.nn.functional.silu(self.norm(self.inp(torch.cat([xt, t, emb], dim=-1))))
        return self.out(self.drop(h))


class FakeMethod:
    """Satisfies the trainer's method interface: denoise x0 from (1-t) x0 + t noise.

    ``fail_at_call``: raise RuntimeError on that (1-based) call of ``loss`` to
    simulate a crash mid-run.
    """

    def __init__(self, emb_dim: int = 8, seed: int = 0, fail_at_call: int | None = None) -> None:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = FakeNet(emb_dim)
        self.emb_dim = emb_dim
        self.fail_at_call = fail_at_call
        self.calls = 0

    def loss(self, x0: Tensor, emb: Tensor, generator: torch.Generator, net: nn.Module | None = None) -> Tensor:
        net = self.net if net is None else net
        self.calls += 1
        if self.fail_at_call is not None and self.calls == self.fail_at_call:
            raise RuntimeError("simulated crash")
        b = x0.shape[0]
        t = torch.rand(b, 1, generator=generator, device=x0.device)
        noise = torch.randn(b, 3, generator=generator, device=x0.device)
        keep = (torch.rand(b, 1, generator=generator, device=x0.device) > 0.1).to(emb.dtype)
        xt = (1 - t) * x0 + t * noise
        return ((net(xt, t, emb * keep) - x0) ** 2).mean()

    def config(self) -> dict:
        return {"method": "fake", "emb_dim": self.emb_dim}


def make_data(n: int = 256, emb_dim: int = 8, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Unit vectors ``(n, 3)`` and embeddings ``(n, emb_dim)`` informative of them."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 3, generator=g)
    x0 = x0 / x0.norm(dim=-1, keepdim=True)
    proj = torch.randn(3, emb_dim, generator=g)
    emb = x0 @ proj + 0.1 * torch.randn(n, emb_dim, generator=g)
    return x0, emb


def ddp_main(out_dir: Path) -> None:
    rank = int(os.environ["RANK"])
    # Deliberately different initialisations per rank: DDP must broadcast rank 0's.
    method = FakeMethod(seed=100 + rank)
    save_weights(out_dir / f"init_rank{rank}.safetensors", method.net.state_dict())
    x0, emb = make_data()
    cfg = TrainConfig(
        train_steps=6, batch_size=16, lr=1e-2, warmup_steps=2, checkpoint_every=3,
        log_every=2, progress=False, seed=3,
    )
    result = train(method, x0, emb, out_dir / "run", cfg)
    save_weights(out_dir / f"final_rank{rank}.safetensors", method.net.state_dict())
    (out_dir / f"result_rank{rank}.json").write_text(
        json.dumps({"world_size": result.world_size, "final_loss": result.final_loss})
    )


if __name__ == "__main__":
    ddp_main(Path(sys.argv[1]))

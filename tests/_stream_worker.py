"""torchrun worker for tests/test_stream.py: trains FakeMethod from a Parquet file through
:class:`globeflow.data.stream.TrainStream` and records which rows each rank read::

    torchrun --standalone --nproc_per_node=2 tests/_stream_worker.py DATA.parquet OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _training_helpers import FakeMethod  # noqa: E402

from globeflow.data.stream import TrainStream  # noqa: E402
from globeflow.io import save_weights  # noqa: E402
from globeflow.training import TrainConfig, train  # noqa: E402


class RecordingStream(TrainStream):
    """Remembers the row ids (stored in embedding column 0) of every batch it hands out."""

    seen: list[int]

    def next_batch(self):
        xb, eb = super().next_batch()
        self.seen.extend(int(v) for v in eb[:, 0])
        return xb, eb


def main(data: str, out_dir: Path) -> None:
    rank = int(os.environ.get("RANK", "0"))
    method = FakeMethod(seed=100 + rank)  # different per rank: DDP must broadcast rank 0's
    stream = RecordingStream(data, buffer_rows=64, read_rows=16)
    stream.seen = []
    cfg = TrainConfig(
        train_steps=8, batch_size=16, lr=1e-2, warmup_steps=2, checkpoint_every=4, log_every=2, progress=False, seed=3
    )
    result = train(method, None, None, out_dir / "run", cfg, stream=stream)
    save_weights(out_dir / f"final_rank{rank}.safetensors", method.net.state_dict())
    (out_dir / f"rows_rank{rank}.json").write_text(json.dumps({"rows": stream.seen, "world_size": result.world_size}))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))

"""Run directories: every file name in one place, the model's command-line config, training a run.

A run directory (``globeflow train --out RUN``)::

    RUN/config.json           resolved config: model (Method.config), train, data, cli, encoder
    RUN/model.safetensors     inference weights (the EMA of the trained network)
    RUN/train_config.json     the trainer's TrainConfig
    RUN/train_log.jsonl       one JSON record per logged step
    RUN/checkpoint/           crash-safe training state, for resuming
    RUN/.lock                 the pid of the process training into RUN (while it runs)
    RUN/data_cache/           WebDataset shards memory-mapped for training (``loader="memory"`` only)
    RUN/heldout.parquet       shipped models only: held-out rows evaluated by ``globeflow demo``

This module imports torch and the trainer only inside :func:`train_run`, so that the file names
are cheap to import (the trainer, the loader and the CLI all use them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from globeflow.io import load_json, save_json

if TYPE_CHECKING:
    from globeflow.data import GeoDataset
    from globeflow.training import TrainConfig

__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "DATA_CACHE_DIR",
    "CALIBRATION_FILE",
    "HELDOUT_FILE",
    "LOCK_FILE",
    "LOG_FILE",
    "TRAIN_CONFIG_FILE",
    "WEIGHTS_FILE",
    "ModelConfig",
    "data_encoder",
    "is_main_process",
    "model_encoder",
    "model_encoder_source",
    "read_training_data",
    "train_run",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TRAIN_CONFIG_FILE = "train_config.json"
LOG_FILE = "train_log.jsonl"
#: Held (pid inside) while a process trains into the run; see :func:`globeflow.io.run_lock`.
LOCK_FILE = ".lock"
CHECKPOINT_DIR = "checkpoint"
DATA_CACHE_DIR = "data_cache"
#: A model directory's held-out rows (embeddings + true locations), evaluated by ``globeflow demo``.
HELDOUT_FILE = "heldout.parquet"
#: Conformal calibration of the run's credible regions (:mod:`globeflow.density.calibration`).
CALIBRATION_FILE = "calibration.json"


@dataclass(frozen=True)
class ModelConfig:
    """Model hyper-parameters as given on the command line (resolved into the run's config.json)."""

    method: str = "rfm"
    width: int = 512
    depth: int = 12
    expansion: int = 4
    schedule: str = "skewed_sigmoid"
    schedule_alpha: float | None = None
    schedule_beta: float | None = None
    cond_drop: float = 0.1
    cond_depth: int = 1
    train_noise: str | None = None  # None: logit_normal(-1, 1) for rfm, the schedule otherwise
    train_noise_mean: float = -1.0
    train_noise_std: float = 1.0
    # Method-specific (None: the method's default; see docs/methods/).
    components: int | None = None
    kappa_link: str | None = None
    num_components: int | None = None
    log_kappa0: float | None = None
    sh_degree: int | None = None

    def method_options(self) -> dict:
        """Options of ``create_method`` beyond the shared ones that the chosen method takes
        (its class's ``option_names``), the ones given only."""
        from globeflow.methods import method_class

        given = {
            "kappa_link": self.kappa_link,
            "components": self.components,
            "num_components": self.num_components,
            "log_kappa0": self.log_kappa0,
            "degree": self.sh_degree,
        }
        known = method_class(self.method).option_names
        return {k: v for k, v in given.items() if v is not None and k in known}

    def train_noise_config(self) -> dict | None:
        """The training noise-level density (None: κ(t) with t ~ U[0, 1], the schedule's).

        Default for rfm: logit-normal(−1, 1), more training near the data; measured better on
        the NLL in docs/recipe.md (diffusion and flow were not measured and keep the schedule).
        The baselines have none (None).
        """
        name = self.train_noise
        if name is None:
            name = "logit_normal" if self.method == "rfm" else "schedule"
        if name == "schedule":
            return None
        if name == "logit_normal":
            return {"name": "logit_normal", "mean": self.train_noise_mean, "std": self.train_noise_std}
        return {"name": name}

    def schedule_params(self) -> dict:
        params = {}
        if self.schedule_alpha is not None:
            params["alpha"] = self.schedule_alpha
        if self.schedule_beta is not None:
            params["beta"] = self.schedule_beta
        return params


def read_training_data(data_path: str | Path, out: Path, embedding_key: str | None) -> GeoDataset:
    """Parquet/NPZ in memory, or WebDataset shards memory-mapped through a cache in ``out``."""
    from globeflow.data import read_dataset
    from globeflow.data.dataset import MAX_EMBEDDING_ABS, check_embedding_range
    from globeflow.data.webdataset import is_webdataset, read_webdataset

    if is_webdataset(data_path):
        data = read_webdataset(data_path, cache_dir=out / DATA_CACHE_DIR, embedding_key=embedding_key)
        check_embedding_range(str(data_path), data.embeddings)
        return data
    if embedding_key is not None:
        raise ValueError("--embedding-key applies to WebDataset shards only")
    return read_dataset(data_path, require_coords=True, max_abs=MAX_EMBEDDING_ABS)


def data_encoder(data_path: str | Path) -> dict | None:
    """The encoder settings ``globeflow embed`` stored in a Parquet file, if any."""
    from globeflow.embed import read_embed_metadata

    if Path(data_path).suffix.lower() not in (".parquet", ".pq") or not Path(data_path).is_file():
        return None
    try:
        return read_embed_metadata(data_path)
    except (OSError, ValueError):
        return None


def model_encoder(model_ref: str | Path, method: Any = None) -> str | None:
    """The encoder a model expects: ``method``'s PLONK provenance when given, else what
    ``globeflow embed`` recorded in the run's training data."""
    plonk = getattr(method, "plonk", None)
    if isinstance(plonk, dict) and plonk.get("encoder"):
        return plonk["encoder"]
    path = Path(model_ref)
    if (path / CONFIG_FILE).is_file():
        cfg = load_json(path / CONFIG_FILE)
        if isinstance(cfg, dict) and isinstance(cfg.get("encoder"), dict):
            return cfg["encoder"].get("name")
    return None


def model_encoder_source(model_ref: str | Path, name: str | None) -> str | None:
    """Where the encoder ``name`` was loaded from when the run's training data was embedded
    (the hub id or local directory ``globeflow embed`` recorded), if that run recorded it."""
    path = Path(model_ref)
    if not (path / CONFIG_FILE).is_file():
        return None
    cfg = load_json(path / CONFIG_FILE)
    enc = cfg.get("encoder") if isinstance(cfg, dict) else None
    if isinstance(enc, dict) and enc.get("source") and (name is None or enc.get("name") == name):
        return str(enc["source"])
    return None


def is_main_process() -> bool:
    """True unless this is a non-zero rank launched by torchrun."""
    from globeflow.training.distributed import env_world

    world = env_world()
    return world is None or world[0] == 0


#: How ``train_run`` reads its data: ``memory`` (whole file in RAM, batches drawn uniformly
#: with replacement), ``stream`` (:class:`globeflow.data.stream.TrainStream`: bounded memory),
#: ``auto`` (stream unless the embeddings fit in the shuffle buffer).
LOADERS = ("auto", "memory", "stream")


def use_stream(data_path: str | Path, loader: str, buffer_rows: int) -> bool:
    """Whether ``train_run`` streams ``data_path`` (see :data:`LOADERS`)."""
    from globeflow.data.stream import list_units

    if loader not in LOADERS:
        raise ValueError(f"loader: expected one of {', '.join(LOADERS)}, got {loader!r}")
    if loader != "auto":
        return loader == "stream"
    units = list_units(data_path, require_coords=False)
    if units[0].kind in ("wds", "arrow"):
        return True
    if units[0].kind == "npz":  # a zip archive cannot be streamed: read whole
        return False
    return sum(u.rows or 0 for u in units) > buffer_rows  # Parquet larger than the window


def train_run(
    data_path: str | Path,
    out: str | Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    embedding_key: str | None = None,
    loader: str = "auto",
    shuffle_buffer: int | None = None,
) -> Path:
    """Train ``model_cfg`` on ``data_path`` into run directory ``out`` (resuming if possible).

    ``loader``: see :data:`LOADERS`; ``shuffle_buffer``: rows of the streaming window
    (default :data:`globeflow.data.stream.DEFAULT_BUFFER_ROWS`).

    The run directory is locked (``out/.lock``, see :func:`globeflow.io.run_lock`) while this
    process trains into it: a second training into the same ``out`` fails at once with
    :class:`~globeflow.io.RunLockedError`; a lock left by a killed process is taken over.
    """
    import contextlib

    from globeflow.io import run_lock

    lock = run_lock(out, LOCK_FILE) if is_main_process() else contextlib.nullcontext()
    with lock:
        return _train_run(
            data_path,
            Path(out),
            model_cfg,
            train_cfg,
            embedding_key=embedding_key,
            loader=loader,
            shuffle_buffer=shuffle_buffer,
        )


def _training_inputs(
    data_path: str | Path, out: Path, loader: str, buffer_rows: int, embedding_key: str | None
) -> tuple[Any, Any, Any, int | None, int]:
    """(stream, x0, emb, rows, embedding dim) of the training data: a bounded-memory
    :class:`~globeflow.data.stream.TrainStream` (x0 and emb None: data-dependent set-up reads
    the first rows later, if needed), else the whole file in memory (stream None)."""
    import torch

    from globeflow.geometry import latlon_to_xyz

    from globeflow.data.dataset import MAX_EMBEDDING_ABS
    from globeflow.data.stream import TrainStream

    if use_stream(data_path, loader, buffer_rows):
        # Every chunk read is range-checked as read_training_data checks the whole file.
        stream = TrainStream(data_path, buffer_rows=buffer_rows, embedding_key=embedding_key, max_abs=MAX_EMBEDDING_ABS)
        return stream, None, None, stream.num_rows, stream.head(1)[1].shape[1]
    data = read_training_data(data_path, Path(out), embedding_key)
    x0 = torch.from_numpy(latlon_to_xyz(data.latitude, data.longitude)).float()
    emb = torch.from_numpy(data.embeddings)
    return None, x0, emb, len(data), data.dim


def _create(model_cfg: ModelConfig, dim: int) -> Any:
    """The untrained method of ``model_cfg`` for ``dim``-d embeddings."""
    from globeflow.methods import create_method

    # Passed only when set, so the baselines (which have neither) keep their arguments.
    extra = {"cond_depth": model_cfg.cond_depth} if model_cfg.cond_depth != 1 else {}
    train_noise = model_cfg.train_noise_config()
    if train_noise is not None:
        extra["train_noise"] = train_noise
    return create_method(
        model_cfg.method,
        dim,
        width=model_cfg.width,
        depth=model_cfg.depth,
        expansion=model_cfg.expansion,
        schedule=model_cfg.schedule,
        schedule_params=model_cfg.schedule_params(),
        cond_drop=model_cfg.cond_drop,
        **extra,
        **model_cfg.method_options(),
    )


def _prepare(method: Any, stream: Any, x0: Any, emb: Any, buffer_rows: int) -> None:
    """Data-dependent set-up before training (MvMF places its components on the data);
    streaming, on the file's first ``buffer_rows`` rows, read only for a method that has one."""
    import torch

    from globeflow.methods.base import Method

    if stream is None:
        method.prepare(x0, emb)
    elif type(method).prepare is not Method.prepare:
        head_xyz, head_emb = stream.head(buffer_rows)
        method.prepare(torch.from_numpy(head_xyz), torch.from_numpy(head_emb))
        del head_xyz, head_emb


def _previous_config(config_path: Path, resolved: dict, out: Path) -> dict | None:
    """The config of the run already in ``out`` (None: a fresh run); ValueError when it is
    another model than ``resolved``'s."""
    if not config_path.is_file():
        return None
    previous = load_json(config_path)
    if previous.get("model") != resolved["model"]:
        raise ValueError(
            f"{out} already holds a run of a different model ({config_path}); choose a new --out or delete it"
        )
    return previous


def _train_run(
    data_path: str | Path,
    out: Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    embedding_key: str | None = None,
    loader: str = "auto",
    shuffle_buffer: int | None = None,
) -> Path:
    import torch

    from globeflow.io import save_weights
    from globeflow.training import train
    from globeflow.training.loop import _derive_seed

    from globeflow.data.stream import DEFAULT_BUFFER_ROWS

    buffer_rows = shuffle_buffer or DEFAULT_BUFFER_ROWS
    stream, x0, emb, rows, dim = _training_inputs(data_path, out, loader, buffer_rows, embedding_key)
    # The network's initial weights (and MvMF's component placement) come from torch's global
    # generator, which this torch build seeds at random in every process: seed it from --seed so
    # that the same command trains the same model.
    torch.manual_seed(_derive_seed(train_cfg.seed, "init"))
    method = _create(model_cfg, dim)
    _prepare(method, stream, x0, emb, buffer_rows)
    out = Path(out)
    resolved: dict[str, Any] = {
        "model": method.config(),
        "train": dataclasses.asdict(train_cfg),
        "data": {
            "path": str(Path(data_path).resolve()),
            "rows": rows,
            "embedding_dim": dim,
            "loader": "stream" if stream is not None else "memory",
            **({"shuffle_buffer": buffer_rows} if stream is not None else {}),
        },
        "cli": dataclasses.asdict(model_cfg),
    }
    encoder = data_encoder(data_path)
    if encoder is not None:  # predict on photos uses the same encoder by default
        resolved["encoder"] = encoder
    config_path = out / CONFIG_FILE
    previous = _previous_config(config_path, resolved, out)
    out.mkdir(parents=True, exist_ok=True)
    # A fresh run records its config at once; a resumed one keeps the config that matches its
    # weights until the training succeeds (a resume that fails leaves the run as it was).
    if is_main_process() and previous is None:  # under torchrun only rank 0 writes files
        save_json(config_path, resolved)
    if not any(p.requires_grad for p in method.net.parameters()):
        # Nothing to train (uniform): the run directory is the config and the (empty) weights.
        if is_main_process():
            save_weights(out / WEIGHTS_FILE, method.net.state_dict(), metadata={"step": 0, "method": method.config()})
        return out
    # The trainer writes the EMA weights, which inference loads, to out/model.safetensors.
    if stream is not None:
        train(method, None, None, out, train_cfg, stream=stream)
    else:
        train(method, x0, emb, out, train_cfg)
    if is_main_process() and previous is not None and previous != resolved:
        save_json(config_path, resolved)
    return out

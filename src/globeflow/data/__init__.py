"""Input data: validated Parquet/NPZ readers and a synthetic world with a closed-form density."""

from globeflow.data.readers import DataError, GeoDataset, read_dataset, write_parquet
from globeflow.data.synthetic import SyntheticWorld, nats_to_paper_nll, write_world_dataset

__all__ = [
    "DataError",
    "GeoDataset",
    "SyntheticWorld",
    "nats_to_paper_nll",
    "read_dataset",
    "write_parquet",
    "write_world_dataset",
]

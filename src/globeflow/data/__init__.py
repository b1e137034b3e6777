"""Input data: validated Parquet/NPZ/WebDataset readers, dataset metadata CSVs, and a
synthetic world with a closed-form density."""

from globeflow.data.dataset import DataError, GeoDataset
from globeflow.data.labels import LabelTable, read_labels
from globeflow.data.parquet import write_parquet
from globeflow.data.readers import read_dataset
from globeflow.data.synthetic import SyntheticWorld, nats_to_paper_nll, write_world_dataset
from globeflow.data.webdataset import iter_webdataset, read_webdataset, write_webdataset

__all__ = [
    "DataError",
    "GeoDataset",
    "LabelTable",
    "SyntheticWorld",
    "iter_webdataset",
    "nats_to_paper_nll",
    "read_dataset",
    "read_labels",
    "read_webdataset",
    "write_parquet",
    "write_webdataset",
    "write_world_dataset",
]

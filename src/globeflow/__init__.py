"""globeflow: probabilistic visual geolocation.

    import globeflow
    model = globeflow.load(run_dir)
    latlon = model.predict(emb, guidance=2.0, sample_steps=16, seed=0)                # (B, 2) degrees
    samples = model.sample(emb, num_samples=64, guidance=0.0, sample_steps=16, seed=0)  # (B, 64, 2)
"""

from globeflow import api
from globeflow.api import load, save
from globeflow.methods import METHODS, Method, create_method

__version__ = "0.1.0"

__all__ = ["METHODS", "Method", "__version__", "api", "create_method", "load", "save"]

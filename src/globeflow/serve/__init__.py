"""``globeflow serve``: an offline web page and a REST API over one loaded model.

:class:`Locator` (no web dependency) does the work; :func:`create_app` wraps it in a FastAPI
app; :func:`serve` runs that app with uvicorn. See :mod:`globeflow.serve.app` for the routes.
"""

from __future__ import annotations

from typing import Any

from globeflow.serve.locator import InputError, Limits, Locator

__all__ = ["InputError", "Limits", "Locator", "create_app", "serve"]


def create_app(locator: Locator) -> Any:
    """The FastAPI app of ``locator`` (imported lazily: fastapi is an optional dependency)."""
    try:
        from globeflow.serve.app import create_app as _create
    except ImportError as err:
        raise ImportError(
            f"globeflow serve needs the web extras ({err.name} is missing): pip install 'globeflow[serve]'"
        ) from None
    return _create(locator)


def serve(locator: Locator, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve ``locator`` on ``host``:``port`` until interrupted (uvicorn, one process)."""
    app = create_app(locator)
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1)

"""The HTTP API: `create_app(cfg)` builds the FastAPI app (see `main.py`); the routers, one per
resource, are in `routes/`, what they share (auth, the service, parameter types) in `deps.py`."""

from cloud_service.api.main import create_app

__all__ = ["create_app"]

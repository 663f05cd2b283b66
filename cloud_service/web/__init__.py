"""The operator web UI, served by the cloud service itself: fleet, asset history, alerts (with
acknowledgement), models and rollouts, dead letters.

Server-rendered Jinja2 pages with a little plain JavaScript for the live parts; charts are
uPlot, vendored under static/vendor/ with its licence. Nothing is fetched from another host, so
the pages work on a plant network with no internet. The API's read token, where set, applies
(`session.py`).
"""

from cloud_service.web.routes import router

__all__ = ["router"]

from cloud_service.cli import app
from contract.cli import run_app

run_app(app, "python -m cloud_service")

from cloud_service.cli import app

app(prog_name="python -m cloud_service")

from contract.cli import run_app
from edge_agent.cli import app

run_app(app, "python -m edge_agent")

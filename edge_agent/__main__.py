from edge_agent.cli import app

app(prog_name="python -m edge_agent")

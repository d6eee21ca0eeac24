"""The apps environment's data: stateful apps (state.py), their tools (tools.py), tasks with gold call
graphs (tasks.py), end-state verification (verify.py), the whole world on disk (world.py) and the MCP
server that serves the tools with one state per episode (server.py)."""

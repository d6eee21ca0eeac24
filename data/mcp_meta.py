"""The `_meta` keys fanout-rl adds to MCP messages, shared by its MCP client (rollouts/mcp_tools.py) and
its apps server (data/apps/server.py). Any other MCP server may ignore them.

- EPISODE_META_KEY in a `tools/call` request's `_meta`: the episode the call acts on, so a stateful
  server can keep one state per episode.
- PARTITION_META_KEY in a `tools/call` request's `_meta`: the part of the server's world the episode is about
  (its question's `metadata["corpus_partition"]`); the apps server starts such an episode from that training
  world's state. Absent: the base world.
- CONTROL_META_KEY in a tool's `_meta` (`tools/list`): a tool for the framework (read or drop an
  episode's state), never offered to the model.
"""

EPISODE_META_KEY = "fanout-rl/episode"
PARTITION_META_KEY = "fanout-rl/partition"
CONTROL_META_KEY = "fanout-rl/control"

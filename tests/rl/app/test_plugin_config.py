"""`plugins:` in a config: the driver imports them before the registered names are checked.

A plugin file in a temporary folder outside the repository registers a reward and a tool; a config that
weights the reward and enables the tool loads only when it lists the plugin. (tests/rl/app/
test_train_files_e2e.py runs a training whose Ray actors use both.)
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from data.errors import ConfigError
from data.plugins import file_module_name
from rewards.registry import REWARDS
from rl.app.registries import load_experiment
from rollouts.tools import TOOL_BUILDERS

ROOT = Path(__file__).resolve().parents[3]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")

PLUGIN_SOURCE = '''
from rewards import register_reward
from rollouts.tools import ToolResult, register_tool


@register_reward({reward!r})
def always_half(trajectory, config):
    return 0.5


class EchoTool:
    name = {tool!r}
    description = "Repeat the text."
    parameters = {{"type": "object", "properties": {{"text": {{"type": "string"}}}}, "required": ["text"]}}

    async def call(self, arguments):
        return ToolResult(observation=arguments["text"])


@register_tool({tool!r})
def build_echo(tools_config, retriever_config, retriever):
    return EchoTool()
'''


@pytest.fixture
def plugin(tmp_path):
    """(path, reward name, tool name) of a plugin file that registers both; unregistered afterwards."""
    suffix = uuid.uuid4().hex[:8]
    reward, tool = f"always_half_{suffix}", f"echo_{suffix}"
    path = tmp_path / "elsewhere" / "my_plugin.py"
    path.parent.mkdir()
    path.write_text(PLUGIN_SOURCE.format(reward=reward, tool=tool))
    yield path, reward, tool
    REWARDS.pop(reward, None)
    TOOL_BUILDERS.pop(tool, None)
    sys.modules.pop(file_module_name(path.resolve()), None)


def test_a_config_naming_plugin_extensions_loads_once_the_plugin_is_listed(plugin, tmp_path):
    path, reward, tool = plugin
    uses = [f"reward.weights.{reward}=0.2", f"tools.enabled=[search,{tool}]"]
    with pytest.raises(ConfigError, match=rf"key 'reward.weights': unknown reward\(s\) \['{reward}'\]"):
        load_experiment(QUICKSTART, uses)
    with pytest.raises(ConfigError, match=rf"key 'tools.enabled': unknown tool\(s\) \['{tool}'\]"):
        load_experiment(QUICKSTART, [f"tools.enabled=[search,{tool}]"])

    config = load_experiment(QUICKSTART, [f"plugins=[{path}]", *uses])
    assert config.plugins == [str(path)]
    assert config.reward.weights[reward] == 0.2 and config.tools.enabled == ["search", tool]
    assert reward in REWARDS and tool in TOOL_BUILDERS


def test_the_tools_of_a_plugin_are_built_by_the_environment(plugin, tiny_world):
    from data.trajectory import ToolCall
    from rl.app.rollout_setup import worker_config
    from rollouts.environment import build_environment

    path, reward, tool = plugin
    config = load_experiment(QUICKSTART, [f"plugins=[{path}]", f"tools.enabled=[search,{tool}]",
                                          "rollout.protocol=function_call", "rollout.prompt_style=full"])
    assert worker_config(config).plugins == [str(path.resolve())]  # what every rollout actor imports
    environment = build_environment(config.rollout, config.tools, config.retriever, documents=tiny_world.documents)
    (call,) = environment.executor.run_turn_sync([ToolCall(tool, {"text": "hello"})])
    assert call.observation == "hello" and call.error is None
    assert environment.protocol.tool_names() == ["search", tool]  # the prompt offers it, the rewards accept it

"""Launch scripts: strict bash, `--help` exits 0, `--dry-run` prints the commands a real launch would run.

The printed commands are quoted for the shell, so each `+ …` line is parsed back with shlex and the
arguments are checked one by one (no cluster, GPU or Slurm needed).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
OWN_SCRIPTS = [
    "quickstart_cpu.sh",
    "single_gpu_node.sh",
    "ray_cluster.sh",
    "slurm_ray.sbatch",
    "slurm_submit.sh",
    "retriever_server.sh",
    "bench.sh",
    "compare_fanout_sequential.sh",
    "fanout_grid.sh",
]


def run_script(name: str, *arguments: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    environment.update(env or {})
    return subprocess.run(
        ["bash", str(SCRIPTS / name), *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=environment,
    )


def printed_commands(name: str, *arguments: str, env: dict | None = None) -> list[list[str]]:
    result = run_script(name, "--dry-run", *arguments, env=env)
    assert result.returncode == 0, result.stderr
    return [
        shlex.split(line[2:])
        for line in result.stdout.splitlines()
        if line.startswith("+ ") and "(" not in line[:4]
    ]


@pytest.mark.parametrize("name", OWN_SCRIPTS)
def test_script_is_strict_bash(name):
    text = (SCRIPTS / name).read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(SCRIPTS / name, os.X_OK)


@pytest.mark.parametrize("name", OWN_SCRIPTS)
def test_script_help_exits_0(name):
    result = run_script(name, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage")


def test_every_shell_script_is_strict():
    for path in [*SCRIPTS.glob("*.sh"), *SCRIPTS.glob("*.sbatch")]:
        text = path.read_text()
        assert text.startswith("#!/usr/bin/env bash"), path
        assert "set -euo pipefail" in text, path


def test_quickstart_dry_run():
    commands = printed_commands("quickstart_cpu.sh", "grpo.total_steps=2")
    assert commands == [
        ["fanout", "train", "configs/quickstart.yaml", "grpo.total_steps=2"],
        ["fanout", "eval", "configs/quickstart.yaml", "grpo.total_steps=2"],
    ]


def test_single_gpu_node_dry_run_splits_gpus_between_rollouts_and_trainer():
    commands = printed_commands(
        "single_gpu_node.sh",
        "--gpus",
        "4",
        "--corpus",
        "/data/wiki.jsonl",
        "grpo.total_steps=3",
        env={"MODEL_PATH": "/models/qwen"},
    )
    assert commands[0][:4] == ["fanout", "serve-retriever", "--corpus", "/data/wiki.jsonl"]
    assert commands[1][:6] == ["env", "CUDA_VISIBLE_DEVICES=0,1,2", "ray", "start", "--head", "--port"]
    assert commands[1][commands[1].index("--num-gpus") + 1] == "3"
    train, evaluate = commands[2], commands[3]
    assert train[:6] == [
        "env",
        "RAY_ADDRESS=127.0.0.1:6379",
        "CUDA_VISIBLE_DEVICES=3",
        "fanout",
        "train",
        "configs/parallelsearch_qwen2.5_7b.yaml",
    ]
    assert {
        "model.path=/models/qwen",
        "retriever.backend=http",
        "retriever.url=http://127.0.0.1:8000/retrieve",
        "rollout.num_workers=3",
        "grpo.total_steps=3",
    } <= set(train)
    assert evaluate[:4] == ["env", "CUDA_VISIBLE_DEVICES=3", "fanout", "eval"]
    assert commands[-1] == ["ray", "stop"]
    assert run_script("single_gpu_node.sh", "--dry-run", "--gpus", "1").returncode == 2


def test_single_gpu_node_commands_load_the_recipe():
    from rl.config import load_config

    commands = printed_commands("single_gpu_node.sh", "--gpus", "8", env={"MODEL_PATH": "/models/qwen"})
    train = commands[1]
    position = train.index("train")
    config = load_config(ROOT / train[position + 1], train[position + 2 :])
    assert (config.rollout.num_workers, config.model.path) == (7, "/models/qwen")


def test_ray_cluster_dry_run_commands():
    assert printed_commands("ray_cluster.sh", "head", "--num-gpus", "8") == [
        [
            "ray",
            "start",
            "--head",
            "--port",
            "6379",
            "--dashboard-host",
            "0.0.0.0",
            "--dashboard-port",
            "8265",
            "--num-gpus",
            "8",
        ]
    ]
    assert printed_commands("ray_cluster.sh", "worker", "--address", "10.0.0.1:6379") == [
        ["ray", "start", "--address", "10.0.0.1:6379"]
    ]
    (submit,) = printed_commands(
        "ray_cluster.sh",
        "submit",
        "--address",
        "10.0.0.1",
        "configs/quickstart.yaml",
        "rollout.num_workers=4",
        env={"MODEL_PATH": "/models/it's here"},
    )
    assert submit[:5] == ["ray", "job", "submit", "--address", "http://10.0.0.1:8265"]
    assert submit[submit.index("--entrypoint-num-gpus") + 1] == "1"  # the trainer's GPU, away from the actors
    runtime_env = json.loads(submit[submit.index("--runtime-env-json") + 1])
    assert runtime_env["working_dir"] == "."
    assert runtime_env["env_vars"]["MODEL_PATH"] == "/models/it's here"
    assert submit[submit.index("--") :] == [
        "--",
        "fanout",
        "train",
        "configs/quickstart.yaml",
        f"experiment.output_dir={ROOT / 'runs'}",
        "rollout.num_workers=4",
    ]


def test_ray_cluster_node_options_and_ray_start_flags():
    assert printed_commands("ray_cluster.sh", "worker", "--address", "10.0.0.1:6379", "--num-cpus", "4", "--resources",
                            '{"rollout_node": 4}', "--", "--block", "--object-store-memory", "1000000000") == [
        ["ray", "start", "--address", "10.0.0.1:6379", "--num-cpus", "4", "--resources", '{"rollout_node": 4}',
         "--block", "--object-store-memory", "1000000000"]
    ]
    (head,) = printed_commands("ray_cluster.sh", "head", "--dashboard-host", "127.0.0.1")
    assert head[head.index("--dashboard-host") + 1] == "127.0.0.1"
    assert run_script("ray_cluster.sh", "--dry-run", "submit", "--address", "h", "c.yaml", "--", "--block").returncode == 2


@pytest.mark.parametrize("name, arguments", [("ray_cluster.sh", ["submit", "--address", "h", "configs/quickstart.yaml"]),
                                             ("slurm_ray.sbatch", ["configs/quickstart.yaml"])])
def test_token_authentication_is_turned_on_only_with_a_token(tmp_path, name, arguments):
    """`ray start --address` and `ray job submit` send the machine's Ray token only with RAY_AUTH_MODE=token."""
    no_token = {"HOME": str(tmp_path), "RAY_AUTH_TOKEN": "", "RAY_AUTH_TOKEN_PATH": "", "RAY_AUTH_MODE": ""}
    note = "RAY_AUTH_MODE=token"
    assert note not in run_script(name, "--dry-run", *arguments, env=no_token).stdout
    assert note in run_script(name, "--dry-run", *arguments, env={**no_token, "RAY_AUTH_TOKEN": "a-token"}).stdout
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("a-token")
    with_file = run_script(name, "--dry-run", *arguments, env=no_token)
    assert note in with_file.stdout and "a-token" not in with_file.stdout
    explicit = run_script(name, "--dry-run", *arguments, env={**no_token, "RAY_AUTH_MODE": "disabled"})
    assert note not in explicit.stdout


def test_ray_cluster_rejects_missing_arguments():
    assert run_script("ray_cluster.sh", "--dry-run", "worker").returncode == 2
    assert run_script("ray_cluster.sh", "--dry-run", "submit", "--address", "h").returncode == 2
    assert run_script("ray_cluster.sh", "launch").returncode == 2


def test_slurm_sbatch_dry_run_starts_ray_with_srun_then_submits():
    result = run_script("slurm_ray.sbatch", "--dry-run", "configs/quickstart.yaml", "grpo.total_steps=5")
    assert result.returncode == 0, result.stderr
    commands = printed_commands("slurm_ray.sbatch", "configs/quickstart.yaml", "grpo.total_steps=5")
    sruns = [command for command in commands if command[0] == "srun"]
    assert any("--head" in command and command[command.index("-w") + 1] == "node-0" for command in sruns)
    assert any(command[command.index("-w") + 1] == "node-1" and "--address" in command for command in sruns)
    submit = commands[-1]
    assert submit[:3] == ["ray", "job", "submit"]
    assert submit[submit.index("--") :] == [
        "--",
        "fanout",
        "train",
        "configs/quickstart.yaml",
        f"experiment.output_dir={ROOT / 'runs'}",
        "grpo.total_steps=5",
    ]
    with_gpus = printed_commands(
        "slurm_ray.sbatch", "configs/quickstart.yaml", env={"SLURM_GPUS_ON_NODE": "8"}
    )
    assert with_gpus[-1][with_gpus[-1].index("--entrypoint-num-gpus") + 1] == "1"
    ray_starts = [command for command in with_gpus if command[0] == "srun" and "--num-gpus" in command]
    assert len(ray_starts) == 2 and all(
        command[command.index("--num-gpus") + 1] == "8" for command in ray_starts
    )
    header = (SCRIPTS / "slurm_ray.sbatch").read_text().split("set -euo pipefail")[0]
    assert "#SBATCH --nodes=" in header and "#SBATCH --ntasks-per-node=1" in header


def test_slurm_sbatch_ray_ports_and_extra_ray_start_flags():
    commands = printed_commands("slurm_ray.sbatch", "configs/quickstart.yaml", env={
        "FANOUT_RAY_PORT": "6390", "FANOUT_DASHBOARD_PORT": "8275", "FANOUT_DASHBOARD_HOST": "127.0.0.1",
        "FANOUT_RAY_HEAD_ARGS": "--dashboard-agent-listen-port 52401",
        "FANOUT_RAY_WORKER_ARGS": '--resources={"rollout_node":8} --dashboard-agent-listen-port 52402'})
    head = next(command for command in commands if "--head" in command)
    worker = next(command for command in commands if command[0] == "srun" and "--address" in command)
    assert head[head.index("--port") + 1] == "6390" and head[head.index("--dashboard-host") + 1] == "127.0.0.1"
    assert head[-3:] == ["--dashboard-agent-listen-port", "52401", "--block"]
    assert worker[worker.index("--address") + 1] == "HEAD_IP:6390"
    assert worker[-4:] == ['--resources={"rollout_node":8}', "--dashboard-agent-listen-port", "52402", "--block"]
    assert commands[-1][commands[-1].index("--address") + 1] == "http://HEAD_IP:8275"


def test_slurm_sbatch_refuses_to_run_outside_slurm():
    result = run_script("slurm_ray.sbatch", "configs/quickstart.yaml")
    assert result.returncode == 2 and "sbatch" in result.stderr


def test_slurm_submit_dry_run():
    assert printed_commands(
        "slurm_submit.sh",
        "--nodes",
        "4",
        "--partition",
        "gpu",
        "configs/quickstart.yaml",
        "async.max_staleness=2",
    ) == [
        [
            "sbatch",
            "--nodes",
            "4",
            "--gpus-per-node",
            "8",
            "--cpus-per-task",
            "32",
            "--time",
            "24:00:00",
            "--partition",
            "gpu",
            "scripts/slurm_ray.sbatch",
            "configs/quickstart.yaml",
            "async.max_staleness=2",
        ]
    ]
    assert run_script("slurm_submit.sh", "configs/does_not_exist.yaml").returncode == 2


def test_retriever_server_dry_run(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    assert printed_commands("retriever_server.sh", "--corpus", str(corpus), "--host", "0.0.0.0") == [
        ["fanout", "serve-retriever", "--corpus", str(corpus), "--host", "0.0.0.0", "--port", "8000"]
    ]
    world = tmp_path / "world"
    assert printed_commands("retriever_server.sh", env={"WORLD_DIR": str(world)}) == [
        ["fanout", "data", "build-world", "--out", str(world), "--seed", "0"],
        [
            "fanout",
            "serve-retriever",
            "--corpus",
            str(world / "corpus.jsonl"),
            "--host",
            "127.0.0.1",
            "--port",
            "8000",
        ],
    ]


def test_bench_dry_run_runs_every_registered_suite():
    from rl.bench import SUITES

    commands = printed_commands("bench.sh", "--quick")
    bench_commands = [command for command in commands if command[:2] == ["fanout", "bench"]]
    assert [command[2] for command in bench_commands] == list(SUITES)
    assert all(command[3] == "--quick" for command in bench_commands)
    assert sum(command[0] == "tail" for command in commands) == len(SUITES)


def test_comparison_trains_both_policies_from_one_warm_start_and_compares_them():
    commands = printed_commands("compare_fanout_sequential.sh", "--out", "/tmp/cmp", "grpo.total_steps=5")
    fanout_train, sequential_train, plot, summary, warm_start_eval, compare, compare_hops = commands
    assert fanout_train[:3] == ["fanout", "train", "configs/quickstart.yaml"]
    assert sequential_train[:3] == ["fanout", "train", "configs/sequential_baseline.yaml"]
    assert "model.path=/tmp/cmp/fanout/sft" in sequential_train and "sft.enabled=false" in sequential_train
    assert "grpo.total_steps=5" in fanout_train and "grpo.total_steps=5" in sequential_train
    assert warm_start_eval[warm_start_eval.index("--checkpoint") + 1] == "/tmp/cmp/fanout/sft"
    assert compare[compare.index("--compare") + 1:][:2] == ["/tmp/cmp/sequential", "/tmp/cmp/fanout"]
    assert plot[:4] == ["python", "-m", "rl.app.plots", "--compare"]
    assert plot[5:] == ["fanout=/tmp/cmp/fanout/metrics.jsonl", "sequential=/tmp/cmp/sequential/metrics.jsonl"]
    assert summary[:5] == ["python", "-m", "rl.app.plots", "--summary", "10"] and summary[5:] == plot[5:]
    assert compare_hops[:-2] == compare[:-2] + ["--group-by", "hops"]


def test_grid_trains_both_policies_per_seed_from_that_seed_s_warm_start_and_evaluates_every_budget():
    commands = printed_commands("fanout_grid.sh", "--out", "/tmp/grid", "--seeds", "0 1", "--budgets", "2 6",
                                "grpo.total_steps=5", "rollout.max_turns=3")
    assert len(commands) == 2 * (2 + 2 * 2) + 1  # per seed: 2 trainings, 2 budgets x 2 policies; the aggregation
    sequential_settings = ["tools.max_calls_per_turn=1", "reward.weights={exact_match: 1.0, format: 0.1}"]
    for seed, block in ((0, commands[0:6]), (1, commands[6:12])):
        fanout_train, sequential_train, *evals = block
        assert fanout_train[:3] == sequential_train[:3] == ["fanout", "train", "configs/quickstart.yaml"]
        assert "sft.enabled=false" not in fanout_train and "tools.max_calls_per_turn=1" not in fanout_train
        for train in (fanout_train, sequential_train):
            assert f"experiment.seed={seed}" in train and "data.world_dir=/tmp/grid/world" in train
            assert "grpo.total_steps=5" in train and train[-1] == "rollout.max_turns=3"  # the training budget
        assert f"model.path=/tmp/grid/fanout-s{seed}/sft" in sequential_train and "sft.enabled=false" in sequential_train
        assert all(setting in sequential_train for setting in sequential_settings)
        assert [(e[2], e[3], e[e.index("--search-budget") + 1], e[e.index("--out") + 1]) for e in evals] == [
            ("configs/quickstart.yaml", f"experiment.name=fanout-s{seed}", "2",
             f"/tmp/grid/eval/fanout/seed{seed}/budget2.json"),
            ("configs/quickstart.yaml", f"experiment.name=sequential-s{seed}", "2",
             f"/tmp/grid/eval/sequential/seed{seed}/budget2.json"),
            ("configs/quickstart.yaml", f"experiment.name=fanout-s{seed}", "6",
             f"/tmp/grid/eval/fanout/seed{seed}/budget6.json"),
            ("configs/quickstart.yaml", f"experiment.name=sequential-s{seed}", "6",
             f"/tmp/grid/eval/sequential/seed{seed}/budget6.json"),
        ]
        for evaluation in evals:
            policy = "fanout" if "experiment.name=fanout" in evaluation[3] else "sequential"
            assert evaluation[evaluation.index("--checkpoint") + 1] == f"/tmp/grid/{policy}-s{seed}"
            assert all((setting in evaluation) == (policy == "sequential") for setting in sequential_settings)
            assert "--group-by" in evaluation and evaluation[evaluation.index("--group-by") + 1] == "hops"
            assert "data.world_dir=/tmp/grid/world" in evaluation and "grpo.total_steps=5" in evaluation
            assert not any(word.startswith("rollout.max_turns=") for word in evaluation)  # --search-budget is it
    assert commands[-1] == ["python", "-m", "rl.app.grid", "/tmp/grid/eval", "--out", "/tmp/grid/grid"]
    eval_only = printed_commands("fanout_grid.sh", "--eval-only", "--seeds", "2", "--budgets", "4")
    assert [command[:2] for command in eval_only] == [["fanout", "eval"]] * 2 + [["python", "-m"]]


def test_grid_starts_both_policies_from_a_given_warm_start_per_seed_and_takes_another_config():
    commands = printed_commands("fanout_grid.sh", "--out", "/tmp/grid", "--seeds", "3", "--budgets", "4",
                                "--config", "configs/reader.yaml", "--warm-start", "/runs/reader-s{seed}/sft")
    fanout_train, sequential_train, fanout_eval, sequential_eval, _ = commands
    for command in commands[:4]:
        assert command[2] == "configs/reader.yaml"
    for train in (fanout_train, sequential_train):
        assert "model.path=/runs/reader-s3/sft" in train and "sft.enabled=false" in train
    assert "tools.max_calls_per_turn=1" in sequential_train and "tools.max_calls_per_turn=1" not in fanout_train
    assert "tools.max_calls_per_turn=1" in sequential_eval and "tools.max_calls_per_turn=1" not in fanout_eval


def test_grid_evaluates_trained_runs_on_a_larger_test_split_beside_the_first_grid():
    commands = printed_commands("fanout_grid.sh", "--out", "/tmp/grid", "--seeds", "1", "--budgets", "3",
                                "--eval-only", "--test-questions", "1200", "eval.structures=[parallel]")
    fanout_eval, sequential_eval, aggregate = commands
    for evaluation, policy in ((fanout_eval, "fanout"), (sequential_eval, "sequential")):
        assert "data.world_dir=/tmp/grid/world-test1200" in evaluation and "data.world.num_test=1200" in evaluation
        assert "data.world_dir=/tmp/grid/world" not in evaluation and "eval.structures=[parallel]" in evaluation
        assert evaluation[evaluation.index("--checkpoint") + 1] == f"/tmp/grid/{policy}-s1"
        assert evaluation[evaluation.index("--out") + 1] == f"/tmp/grid/eval-test1200/{policy}/seed1/budget3.json"
    assert aggregate == ["python", "-m", "rl.app.grid", "/tmp/grid/eval-test1200", "--out", "/tmp/grid/grid-test1200"]
    trained = printed_commands("fanout_grid.sh", "--out", "/tmp/grid", "--seeds", "1", "--budgets", "3",
                               "--test-questions", "1200")
    assert all("data.world_dir=/tmp/grid/world" in train for train in trained[:2])  # training keeps its world


@pytest.mark.parametrize("arguments", [("--seeds", "0 x"), ("--budgets", ""), ("--colour", "red"),
                                       ("--test-questions", "0"), ("--test-questions", "many")])
def test_grid_rejects_bad_lists_and_options(arguments):
    result = run_script("fanout_grid.sh", "--dry-run", *arguments)
    assert result.returncode == 2 and "fanout_grid.sh:" in result.stderr


TINY_GRID = [
    "data.world.num_entities_per_kind=12", "data.world.num_train=60", "data.world.num_validation=6",
    "data.world.num_test=12", "model.tiny.hidden_size=32", "model.tiny.num_hidden_layers=1",
    "model.tiny.num_attention_heads=2", "model.tiny.num_key_value_heads=1", "model.tiny.intermediate_size=64",
    "model.tiny.vocab_size=512", "model.tiny.pretrain_steps=0", "sft.num_trajectories=40", "sft.max_steps=10",
    "sft.batch_size=8",
    "grpo.total_steps=1", "rollout.questions_per_step=2", "rollout.group_size=2",
    "rollout.max_new_tokens_per_turn=48", "rollout.max_context_tokens=1024", "eval.num_questions=8",
    "logging.wandb_mode=disabled", "logging.progress_bar=false", "logging.plots=false",
]


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_grid_end_to_end_on_a_tiny_config(tmp_path):
    """Two seeds x two budgets on a micro model: every eval file, and a grid whose cells hold both policies.

    4 trainings and 8 evaluations, each a fresh process: about 4 minutes on 2 idle cores, far more on a loaded
    machine (hence the timeout)."""
    from rl.bench.common import DISTRIBUTED_VARIABLES

    environment = {key: value for key, value in os.environ.items()
                   if key not in DISTRIBUTED_VARIABLES and not key.startswith("SLURM_")}
    environment.update(WANDB_MODE="disabled", PYTHONPATH=str(ROOT))
    result = subprocess.run(["bash", str(SCRIPTS / "fanout_grid.sh"), "--out", str(tmp_path), "--seeds", "0 1",
                             "--budgets", "1 2", *TINY_GRID],
                            capture_output=True, text=True, timeout=3500, cwd=ROOT, env=environment)
    assert result.returncode == 0, result.stderr[-4000:]
    for policy in ("fanout", "sequential"):
        for seed in (0, 1):
            for budget in (1, 2):
                results = json.loads((tmp_path / "eval" / policy / f"seed{seed}" / f"budget{budget}.json").read_text())
                assert results["world"]["all"]["n"] == 8
                assert results["world"]["all"]["model_calls"] <= budget + 1  # N search rounds + the answer round
    grid = json.loads((tmp_path / "grid.json").read_text())
    assert grid["seeds"] == [0, 1] and grid["budgets"] == [1, 2] and grid["policies"] == ["fanout", "sequential"]
    overall = grid["cells"]["world"]["2"]["all"]
    assert overall["n"] == 8 and overall["policies"]["fanout"]["seeds"] == 2 and overall["difference"]["seeds"] == 2
    assert any("/" in group for group in grid["cells"]["world"]["1"])  # the hops rows
    assert (tmp_path / "grid.md").read_text().startswith("| dataset | budget | group | n |")
    assert (tmp_path / "sequential-s1" / "config.yaml").read_text().count(f"{tmp_path}/fanout-s1/sft") == 1

"""The `fanout` command line: train, eval, data, serve-retriever, bench, config.

Each subcommand imports its implementation lazily so `fanout --help` and `fanout config show` stay fast.
Configuration and data errors print one clear message and exit with code 2. Log lines of the project's
packages (data, rewards, rollouts, rl) go to stderr from level INFO (`--log-level`); other libraries'
from WARNING.

    fanout train configs/quickstart.yaml grpo.total_steps=10
    fanout config show configs/quickstart.yaml grpo.learning_rate=1e-5
    fanout --log-level DEBUG eval configs/quickstart.yaml
"""

from __future__ import annotations

import argparse
import logging
import sys

EXIT_BAD_INPUT = 2
PROJECT_PACKAGES = ("data", "rewards", "rollouts", "rl")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str = "INFO") -> None:
    """Project loggers at `level`, everything else at WARNING, one stderr handler on the root logger."""
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT, datefmt="%H:%M:%S")
    for package in PROJECT_PACKAGES:
        logging.getLogger(package).setLevel(level)


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fanout-rl")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment YAML file (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. grpo.learning_rate=1e-5 async.max_staleness=2")


def _cmd_config_show(args: argparse.Namespace) -> int:
    from rl.app.registries import load_experiment
    from rl.config import to_yaml

    print(to_yaml(load_experiment(args.config, args.overrides)), end="")
    return 0


CONFIG_DOCS_HEADER = """# Configuration reference

Generated from the field comments in the packages' config modules (`data/config.py`, `rollouts/config.py`,
`rewards/config.py`, `rl/config.py`) by `fanout config docs > docs/CONFIG.md` (do not edit by hand;
tests/test_configs.py checks it is current). Every key can be set in a YAML file under `configs/` or on
the command line as `section.key=value`; `fanout config show CONFIG [key=value ...]` prints the result."""


def _cmd_config_docs(args: argparse.Namespace) -> int:
    from rl.config import field_docs

    print(CONFIG_DOCS_HEADER)
    current_section = None
    for key, type_name, default, comment in field_docs():
        section = key.split(".")[0]
        if section != current_section:
            print(f"\n## {section}\n\n| key | type | default | meaning |\n|---|---|---|---|")
            current_section = section
        cells = (f"`{key}`", type_name, f"`{default}`", comment.replace("<", "\\<"))  # no stray HTML tags
        print("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from rl.app.registries import load_experiment
    from rl.app.train import train
    from rl.grpo.deepspeed_setup import leave_distributed

    try:
        train(load_experiment(args.config, args.overrides))
    finally:
        leave_distributed()
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from rl.app.registries import load_experiment
    from rl.app.evaluate import evaluate_command, search_budget_overrides

    config = load_experiment(args.config, search_budget_overrides(args.overrides, args.search_budget))
    out = args.out
    if args.fresh_world is not None:
        from rl.app.evaluate import use_fresh_world

        fresh_folder = use_fresh_world(config, args.fresh_world)  # always: an --out must not skip the redraw
        out = out or str(fresh_folder.with_suffix(".eval.json"))
    return evaluate_command(config, checkpoint=args.checkpoint, out=out, compare=args.compare, group_by=args.group_by,
                            episodes=args.episodes)


def _cmd_build_world(args: argparse.Namespace) -> int:
    from data.world import write_world
    from data.config import WorldConfig

    world_config = WorldConfig(seed=args.seed)
    if args.num_train is not None:
        world_config.num_train = args.num_train
    write_world(args.out, world_config)
    print(f"wrote the generated world to {args.out}")
    return 0


def family_weights(text: str) -> dict[str, float]:
    """`--train-families` text, "name=weight,name=weight", as {name: weight}; empty text: {}."""
    weights = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, _, weight = item.partition("=")
        try:
            value = float(weight)  # no "=": float("") fails too
        except ValueError:
            value = None
        if value is None or not name.strip():
            raise argparse.ArgumentTypeError(f"{item!r} is not family=weight (e.g. stock_total=2.5)")
        weights[name.strip()] = value
    return weights


def _cmd_build_apps(args: argparse.Namespace) -> int:
    from data.apps.world import write_apps_world
    from data.config import AppsWorldConfig

    apps_config = AppsWorldConfig(seed=args.seed)
    if args.num_train is not None:
        apps_config.num_train = args.num_train
    apps_config.train_worlds = args.train_worlds
    apps_config.world_tasks = args.world_tasks
    apps_config.world_families = [name for name in args.world_families.split(",") if name]
    apps_config.world_redraw = args.world_redraw
    apps_config.train_families = args.train_families
    write_apps_world(args.out, apps_config)
    states = "base_state.json" + (f", base_state-w1..w{args.train_worlds}.json" if args.train_worlds else "")
    print(f"wrote the apps world ({states}, train/validation/test.jsonl) to {args.out}; serve it with "
          f"python -m data.apps.server --world-dir {args.out}")
    return 0


def _cmd_serve_retriever(args: argparse.Namespace) -> int:
    from data.server import serve

    serve(corpus_path=args.corpus, host=args.host, port=args.port, index_dir=args.index_dir)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from rl.bench import run_suite

    run_suite(args.suite, quick=args.quick, overrides=args.overrides, from_run=args.from_run,
              async_steps=args.async_steps)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fanout", description="Train LLM agents with RL to fan out tool calls.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.add_argument("--log-level", default="INFO", choices=LOG_LEVELS,
                        help="level of the project's log lines on stderr (default INFO)")
    # The `deepspeed` launcher adds --local_rank=N before the command (`deepspeed -m rl train ...`); the rank comes
    # from the environment it also sets (LOCAL_RANK, RANK, WORLD_SIZE), so the option is accepted and unused.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="SFT warm-start (optional) then GRPO on Ray rollout actors")
    _add_config_arguments(train)
    train.set_defaults(handler=_cmd_train)

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint: EM/F1, model calls, sub-queries per round")
    _add_config_arguments(evaluate)
    evaluate.add_argument("--checkpoint", help="model folder (a checkpoint or any HF model path)")
    evaluate.add_argument("--out", help="write the results JSON here")
    evaluate.add_argument("--episodes", metavar="FILE",
                          help="also write every episode as a JSON line (rounds, tool calls, observations, answer, "
                               "figures; the verifier's verdict on apps tasks)")
    evaluate.add_argument("--compare", nargs=2, metavar=("A", "B"), help="evaluate two checkpoints side by side")
    evaluate.add_argument("--group-by", default="structure", metavar="KEY",
                          help="table rows: 'structure' (parallel/sequential/single, the default), 'hops' "
                               "(the structure rows plus one per structure and number of gold sub-questions, "
                               "e.g. parallel/2) or 'retrieval' (the structure rows plus, per structure, the "
                               "episodes whose searches found every supporting passage, e.g. parallel/retrieved, "
                               "and those that missed one, parallel/missed)")
    evaluate.add_argument("--search-budget", type=int, default=None, metavar="N",
                          help="at most N search rounds per question, then one forced-answer round "
                               "(= rollout.max_turns=N; default: the config's rollout.max_turns)")
    evaluate.add_argument("--fresh-world", type=int, metavar="SEED",
                          help="evaluate on the test split of a world generated with this seed (facts never seen "
                               "in training; names too, unless data.world.names=shared), cached in "
                               "<run_dir>/world-seed<SEED> (QA) and <run_dir>/apps_world-seed<SEED> (apps; both "
                               "for a mixed run)")
    evaluate.set_defaults(handler=_cmd_eval)

    data = commands.add_parser("data", help="data tools")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    build_world = data_commands.add_parser("build-world", help="write the generated world (corpus + splits)")
    build_world.add_argument("--out", required=True, help="output folder")
    build_world.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    build_world.add_argument("--num-train", type=int, default=None, help="training questions (default from config)")
    build_world.set_defaults(handler=_cmd_build_world)
    build_apps = data_commands.add_parser("build-apps", help="write the apps world (base state + tasks, docs/APPS.md)")
    build_apps.add_argument("--out", required=True, help="output folder")
    build_apps.add_argument("--seed", type=int, default=0, help="apps world seed (default 0)")
    build_apps.add_argument("--num-train", type=int, default=None, help="training tasks (default 1000)")
    build_apps.add_argument("--train-worlds", type=int, default=0,
                            help="re-drawn worlds the training tasks also act on (default 0: the base world only)")
    build_apps.add_argument("--world-tasks", type=int, default=0,
                            help="tasks per re-drawn world, on top of --num-train "
                                 "(default 0: --num-train split evenly)")
    build_apps.add_argument("--world-families", default="",
                            help="comma-separated task families the re-drawn worlds' tasks come from "
                                 "(default: all)")
    build_apps.add_argument("--world-redraw", default="all",  # checked by data/apps/world.py (WORLD_REDRAWS)
                            help="what a re-drawn world draws anew: all (its own state, the default) or "
                                 "notes (the base world's state, each note naming another product or order)")
    build_apps.add_argument("--train-families", type=family_weights, default={},
                            help="weights of the task families among the base world's training tasks, e.g. "
                                 "stock_total=2.5,schedule_meeting=2 (a family not named weighs 1; default: "
                                 "by structure)")
    build_apps.set_defaults(handler=_cmd_build_apps)

    serve = commands.add_parser("serve-retriever", help="HTTP retrieval server (Search-R1 compatible /retrieve)")
    serve.add_argument("--corpus", required=True, help="JSONL corpus with {id, contents} rows")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--index-dir", default="", help="where to save/load the BM25 index")
    serve.set_defaults(handler=_cmd_serve_retriever)

    from rl.bench import SUITES  # names only; a suite's module is imported when it runs

    bench = commands.add_parser("bench", help="benchmarks; the last printed line is a JSON object of figures")
    bench.add_argument("suite", choices=SUITES.names(), help="the suite to run: %(choices)s")
    bench.add_argument("--quick", action="store_true", help="a tiny setting (used by the test suite)")
    bench.add_argument("--from-run", default=None, metavar="RUN_DIR",
                       help="learn: start from a finished run's config.yaml, world and SFT warm-start")
    bench.add_argument("--async-steps", type=int, default=None, metavar="N",
                       help="learn: the staleness-2 run trains N steps (default: as many as the "
                            "synchronous run)")
    bench.add_argument("overrides", nargs="*", metavar="key=value",
                       help="config overrides for the suites that take them (learn), after the suite's own")
    bench.set_defaults(handler=_cmd_bench)

    config = commands.add_parser("config", help="inspect configurations")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="CONFIG_COMMAND")
    show = config_commands.add_parser("show", help="print the resolved config")
    _add_config_arguments(show)
    show.set_defaults(handler=_cmd_config_show)
    docs = config_commands.add_parser("docs", help="print the configuration reference as a Markdown table")
    docs.set_defaults(handler=_cmd_config_docs)
    return parser


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """argparse, with `key=value` overrides accepted after options too (`fanout eval CFG --checkpoint X k=v`).

    argparse stops filling a positional list at the first option, so overrides written after one come back
    unrecognised; they join the command's overrides (in order). Anything else unrecognised is an error.
    """
    args, unrecognised = parser.parse_known_args(argv)
    if unrecognised:
        is_override = all("=" in text and not text.startswith("-") for text in unrecognised)
        if not is_override or not isinstance(getattr(args, "overrides", None), list):
            parser.error(f"unrecognized arguments: {' '.join(unrecognised)}")
        args.overrides = [*args.overrides, *unrecognised]
    return args


def main(argv: list[str] | None = None) -> int:
    from data.errors import DataError
    from rl.config import ConfigError

    args = parse_arguments(build_parser(), argv)
    configure_logging(args.log_level)
    try:
        return args.handler(args)
    except (ConfigError, DataError) as error:
        print(f"fanout: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("fanout: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

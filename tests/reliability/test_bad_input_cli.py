"""Bad configuration and bad data through the CLI: one message naming file, line or key, and exit code 2.

Each case runs `fanout train` (in process through `rl.cli.main`, which is what the console script
calls; two cases also as a real subprocess) and checks three things: the exit code is 2, stderr is one
`fanout: error:` line that names what is wrong and where, and nothing was written into the run folder
(it is absent or empty), so fixing the input and running the same command again just works. An
existing run folder is refused without experiment.resume/overwrite and left byte-for-byte untouched.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow
import pyarrow.parquet
import pytest
from reliability_helpers import ROOT, file_hashes, run_fanout, write_jsonl

from rl.cli import EXIT_BAD_INPUT, main

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
GOOD_ROW = {"id": "1", "question": "Who founded Bemo Hall?", "golden_answers": ["Varlo Tenmis"]}
GOOD_DOCUMENT = {"id": "d1", "contents": "Bemo Hall\nBemo Hall was founded by Varlo Tenmis."}


def files_source(tmp_path: Path, train_file: Path, corpus: Path | None = None) -> list[str]:
    corpus = corpus or write_jsonl(tmp_path / "corpus.jsonl", [GOOD_DOCUMENT])
    return ["data.source=files", f"data.train_files.nq={train_file}", f"data.corpus_path={corpus}"]


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    return path


def unknown_key(tmp_path):
    return [
        "grpo.learnig_rate=1e-5"
    ], r"command line: unknown key 'grpo\.learnig_rate'\. Did you mean: grpo\.learning_rate"


def wrong_type(tmp_path):
    return ["grpo.total_steps=many"], r"command line 'grpo\.total_steps=many': key 'grpo\.total_steps'"


def wrong_type_in_yaml(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("grpo:\n  total_steps: many\n")
    return ["--config", str(config)], rf"{re.escape(str(config))}: key 'grpo\.total_steps'"


def missing_config_file(tmp_path):
    return [
        "--config",
        str(tmp_path / "absent.yaml"),
    ], rf"config file '{re.escape(str(tmp_path))}/absent\.yaml' does not exist"


def missing_data_file(tmp_path):
    path = tmp_path / "absent.jsonl"
    return files_source(tmp_path, path), rf"{re.escape(str(path))}: file does not exist"


def malformed_jsonl_row(tmp_path):
    path = write_jsonl(tmp_path / "nq.jsonl", [GOOD_ROW, GOOD_ROW, {"id": "3", "question": "Who?"}])
    return files_source(tmp_path, path), rf"{re.escape(str(path))}:3: malformed row: 'golden_answers'"


def broken_json_line(tmp_path):
    path = write_jsonl(tmp_path / "nq.jsonl", [GOOD_ROW, '{"id": "2", "question": '])
    return files_source(tmp_path, path), rf"{re.escape(str(path))}:2: not valid JSON"


def malformed_parquet_row(tmp_path):
    path = write_parquet(tmp_path / "nq.parquet", [GOOD_ROW, {**GOOD_ROW, "id": "2", "question": " "}])
    return files_source(tmp_path, path), rf"{re.escape(str(path))}:2: malformed row: 'question'"


def empty_dataset(tmp_path):
    path = tmp_path / "nq.jsonl"
    path.write_text("")
    return files_source(tmp_path, path), rf"{re.escape(str(path))}: no questions: the file has no rows"


def corpus_without_contents(tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"id": "d1", "text": "Bemo Hall was founded in 1901."}])
    train_file = write_jsonl(tmp_path / "nq.jsonl", [GOOD_ROW])
    return (
        files_source(tmp_path, train_file, corpus),
        rf"{re.escape(str(corpus))}:1: corpus row needs a string 'contents'",
    )


CASES = [
    unknown_key,
    wrong_type,
    wrong_type_in_yaml,
    missing_config_file,
    missing_data_file,
    malformed_jsonl_row,
    broken_json_line,
    malformed_parquet_row,
    empty_dataset,
    corpus_without_contents,
]


@pytest.mark.parametrize("case", CASES, ids=[case.__name__ for case in CASES])
def test_bad_input_exits_2_with_one_message_and_writes_nothing(case, tmp_path, capsys):
    arguments, expected_message = case(tmp_path)
    config_path = QUICKSTART
    if arguments[:1] == ["--config"]:
        config_path, arguments = arguments[1], arguments[2:]
    output_dir = tmp_path / "runs"
    code = main(
        ["train", config_path, f"experiment.output_dir={output_dir}", "experiment.name=bad", *arguments]
    )
    stderr = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    error_lines = [line for line in stderr.splitlines() if line.startswith("fanout: error:")]
    assert len(error_lines) == 1, stderr
    assert re.search(expected_message, error_lines[0]), error_lines[0]
    run_dir = output_dir / "bad"
    assert not run_dir.exists() or not any(run_dir.iterdir())  # nothing half-written


def test_a_malformed_row_through_the_console_script(tmp_path):
    arguments, expected_message = malformed_jsonl_row(tmp_path)
    result = run_fanout(
        [
            "train",
            QUICKSTART,
            f"experiment.output_dir={tmp_path / 'runs'}",
            "experiment.name=bad",
            *arguments,
        ],
        timeout_s=300,
    )
    assert result.returncode == EXIT_BAD_INPUT
    assert re.search(expected_message, result.stderr.strip().splitlines()[-1])


def test_an_existing_run_folder_is_refused_and_left_untouched(tmp_path):
    run_dir = tmp_path / "runs" / "existing"
    (run_dir / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("experiment:\n  name: existing\n")
    write_jsonl(
        run_dir / "metrics.jsonl", [{"step": step, "reward/total": 0.1 * step} for step in range(1, 5)]
    )
    (run_dir / "checkpoints" / "checkpoint-4" / "trainer_state.json").write_text(
        '{"step": 4, "version": 4}\n'
    )
    (run_dir / "checkpoints" / "latest").write_text("checkpoint-4\n")
    before = file_hashes(run_dir)

    result = run_fanout(
        ["train", QUICKSTART, f"experiment.output_dir={tmp_path / 'runs'}", "experiment.name=existing"],
        timeout_s=300,
    )
    assert result.returncode == EXIT_BAD_INPUT
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("fanout: error: run folder") and "experiment.resume=true" in message
    assert "experiment.overwrite=true" in message
    assert file_hashes(run_dir) == before  # same files, same bytes

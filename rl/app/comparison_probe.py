"""Can the policy's architecture learn a worked comparison's decisions on their own? A probe.

It trains a fresh tiny model (the run's model config and tokenizer, nothing of its SFT) on comparison drills
alone: each row a worked comparison in one form about a training comparison's names with years drawn anew
(rl/app/expert.py `comparison_drill_dataset`), the loss on each step's decision and winner only. On drills
about the test questions' names it reports, teacher-forced, how often each decision token is right, by its
place in the step's decision (for `side_by_side`: the year's two tokens, then the name's), and how often a
whole drill is. A form the probe does not learn in isolation will not be learnt inside a 100-token
demonstration either; one it learns tells what to demonstrate.

`--init base` starts instead from the run's base model as saved (after its copy pretraining, when the run
pretrained: `model.tiny.pretrain_steps`), so the probe tells whether the copying learnt there makes a form's
decisions learnable. `--init sft --steps 0` only measures the run's warm-start on drills, teacher-forced: what
its SFT kept of each decision. `--save DIR` writes the probed model and the run's tokenizer (save_pretrained),
so a run can start from it (`model.path=DIR`).

Forms: the thought forms of data/worked_comparisons.py (DRILL_FORMS) and `year_first`, a probe-only
variant of side_by_side whose entries put the year before the name (`1987 Ann Lee , 1990 Bo Kay vs 1987 Ann
Lee first 1987 Ann Lee`), so that the name after the winner's year is a copy of what follows that year.

    python -m rl.app.comparison_probe --run runs/reader --form digits --steps 500 --out probe.json
    python -m rl.app.comparison_probe --run runs/reader --form side_by_side --init base
    python -m rl.app.comparison_probe --run runs/quickstart --form side_by_side --init sft --steps 0
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

from data.worked_comparisons import DRILL_FORMS, comparison_drill, drill_entries, running_best
from rl.app.expert import tokenize_drill
from rl.app.sft import CausalPaddingCollator

logger = logging.getLogger(__name__)

PROBE_FORMS = (*DRILL_FORMS, "year_first")


def year_first_drill(names: list[str], years: list[int], earliest: bool) -> list[tuple[str, bool]]:
    """side_by_side with every entry written year first; the decision pieces are each step's winner."""
    word = "first" if earliest else "last"

    def entry(index: int) -> str:
        return f"{years[index]} {names[index]}"

    pieces = [(entry(0), False)]
    for index, (previous, best) in enumerate(running_best(years, earliest), start=1):
        pieces += [(f" , {entry(index)} vs {entry(previous)} {word}", False), (f" {entry(best)}", True)]
    return pieces


def probe_rows(questions: list, tokenizer: Any, count: int, form: str, seed: int) -> list[dict]:
    """`count` drills in `form`: input_ids, and for each token the index of its place in a decision piece
    (-1 outside: no loss there)."""
    if form not in PROBE_FORMS:
        raise ValueError(f"--form must be one of {', '.join(PROBE_FORMS)}, not {form!r}")
    rows = []
    for names, years, earliest in drill_entries(questions, count, random.Random(f"comparison-probe:{seed}")):
        pieces = (year_first_drill(names, years, earliest) if form == "year_first"
                  else comparison_drill(names, years, earliest, form))
        input_ids, places = tokenize_drill(tokenizer, pieces)
        rows.append({"input_ids": input_ids, "places": places})
    return rows


def padded_batch(rows: list[dict], pad_id: int) -> dict:
    """Right-padded input_ids, labels (-100 outside the decisions) and position ids: the SFT's collator
    (rl/app/sft.CausalPaddingCollator, TRL's without the attention mask, which keeps CPU attention fused)."""
    return CausalPaddingCollator(pad_id)([
        {"input_ids": row["input_ids"],
         "labels": [token if place >= 0 else -100 for token, place in zip(row["input_ids"], row["places"])]}
        for row in rows])


def decision_accuracy(model: Any, rows: list[dict], pad_id: int, batch_size: int = 100) -> dict:
    """Teacher-forced: the share of decision tokens predicted right, by place and overall, and of whole
    rows."""
    import torch

    right_by_place: dict[int, list[int]] = {}
    rows_right = 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            batch = padded_batch(chunk, pad_id)
            logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
            predicted = logits[:, :-1].argmax(-1)
            for index, row in enumerate(chunk):
                all_right = True
                for position, place in enumerate(row["places"][1:]):
                    if place < 0:
                        continue
                    right = int(predicted[index, position] == row["input_ids"][position + 1])
                    counts = right_by_place.setdefault(place, [0, 0])
                    counts[0], counts[1] = counts[0] + right, counts[1] + 1
                    all_right = all_right and bool(right)
                rows_right += all_right
    model.train(was_training)
    total = sum(counts[1] for counts in right_by_place.values())
    return {
        "tokens": round(sum(counts[0] for counts in right_by_place.values()) / total, 4),
        "by_place": {str(place): round(right / seen, 4)
                     for place, (right, seen) in sorted(right_by_place.items())},
        "rows": round(rows_right / len(rows), 4),
    }


def run_probe(train_rows: list[dict], test_rows: list[dict], model: Any, pad_id: int, steps: int,
              learning_rate: float, batch_size: int = 64, eval_every: int = 250, seed: int = 0) -> list[dict]:
    """AdamW at a constant learning rate on `train_rows`; the test accuracy every `eval_every` steps (with no
    steps, once, of the model as it is)."""
    import torch

    if steps == 0:
        return [{"step": 0, "loss": None, "seconds": 0.0, **decision_accuracy(model, test_rows, pad_id)}]

    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    order, cursor, started, history = list(range(len(train_rows))), 0, time.perf_counter(), []
    random.Random(seed).shuffle(order)
    model.train()
    for step in range(1, steps + 1):
        if cursor + batch_size > len(order):
            cursor = 0
        batch = [train_rows[index] for index in order[cursor:cursor + batch_size]]
        cursor += batch_size
        loss = model(**padded_batch(batch, pad_id)).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % eval_every == 0 or step == steps:
            seconds = round(time.perf_counter() - started, 1)
            row = {"step": step, "loss": round(loss.item(), 4), "seconds": seconds,
                   **decision_accuracy(model, test_rows, pad_id)}
            logger.info("probe: %s", row)
            history.append(row)
    return history


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a run folder holding world/ and base/ (its tiny model)")
    parser.add_argument("--form", default="digits", choices=PROBE_FORMS)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-drills", type=int, default=20000)
    parser.add_argument("--test-drills", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--init", default="fresh", choices=("fresh", "base", "sft"),
                        help="fresh weights (the run's model config), the run's base model as saved, or its "
                             "SFT warm-start (<run>/sft)")
    parser.add_argument("--number-embedding", default="random", choices=("random", "ordered"),
                        help="with --init fresh: model.tiny.number_embedding")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="write the settings and the accuracy history here (JSON)")
    parser.add_argument("--save", default="", help="write the probed model and the run's tokenizer here")
    args = parser.parse_args(argv)
    if args.number_embedding != "random" and args.init != "fresh":
        parser.error("--number-embedding applies to --init fresh (a base model keeps its own embeddings)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from data.world import load_world
    from rl.app.modeling import order_number_embeddings
    from rollouts.model_loading import load_tokenizer

    run = Path(args.run)
    world = load_world(run / "world")
    tokenizer = load_tokenizer(run / "base")
    torch.manual_seed(args.seed)
    if args.init != "fresh":  # the run's tiny model as built, copy pretraining included, or its warm-start
        if not (run / args.init / "config.json").is_file():
            parser.error(f"--init {args.init}: {run / args.init} holds no saved model")
        model = Qwen2ForCausalLM.from_pretrained(run / args.init)
    else:  # fresh weights: nothing trained
        model = Qwen2ForCausalLM(Qwen2Config.from_pretrained(run / "base"))
        if args.number_embedding == "ordered":
            order_number_embeddings(model, tokenizer)
    comparisons = {split: [question for question in world.splits[split] if question.structure == "parallel"]
                   for split in ("train", "test")}
    train_rows = probe_rows(comparisons["train"], tokenizer, args.train_drills, args.form, seed=args.seed)
    test_rows = probe_rows(comparisons["test"], tokenizer, args.test_drills, args.form, seed=args.seed + 1)
    history = run_probe(train_rows, test_rows, model, tokenizer.pad_token_id, args.steps, args.lr,
                        args.batch_size, args.eval_every, args.seed)
    if args.save:
        model.save_pretrained(args.save)
        tokenizer.save_pretrained(args.save)
    result = {"settings": vars(args), "history": history}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()

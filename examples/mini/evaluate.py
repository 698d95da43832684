"""One CLIP's held-out evaluation: retrieval, zero-shot shape and zero-shot colour.

    python evaluate.py WORK RUN

Runs the three `vecap eval` commands it prints, one after the other, in this
process through vecap's own entry point, so that torch and open_clip load once
per CLIP instead of once per task (the demo evaluates seven CLIPs, and loading
them is most of an evaluation's time at this size). Writes each result to
WORK/eval/RUN-TASK.json and the three together to WORK/eval/RUN.json: a column
of `vecap eval --compare`.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from vecap_cli.cli.app import main as vecap


def commands(work: Path, run: str) -> dict[str, list[str]]:
    """The `vecap eval` arguments of each task, by the name of its result file."""
    model = ["--model", str(work / "runs" / run)]
    zeroshot = {
        name: [
            *("eval", "--quiet", "--task", "zeroshot", str(work / f"test-{name}.jsonl"), *model),
            *("--classnames", str(work / f"{classes}.txt")),
            *("--templates", str(work / f"{name}-prompts.json"), "--dataset-name", f"mini-{name}"),
        ]
        for name, classes in (("shape", "shapes"), ("colour", "colours"))
    }
    retrieval = ["eval", "--quiet", "--task", "retrieval", str(work / "test.jsonl"), *model]
    return {"retrieval": [*retrieval, "--dataset-name", "mini-test"], **zeroshot}


def run_vecap(argv: list[str]) -> None:
    print("vecap", shlex.join(argv), flush=True)
    try:
        vecap(argv)
    except SystemExit as done:  # click ends every command with one, 0 when it succeeded
        if done.code:
            raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("run")
    args = parser.parse_args()
    out = args.work / "eval"
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for task, argv in commands(args.work, args.run).items():
        path = out / f"{args.run}-{task}.json"
        run_vecap([*argv, "-o", str(path)])
        results.append(json.loads(path.read_text()))
    (out / f"{args.run}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

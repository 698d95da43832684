"""How many records a head entry keeps, over t: the number `vecap curate --t`'s
help and `curate report` quote (an entry is not capped at t: records kept
through their other entries count for it too).

    python benchmarks/measure_head_kept.py [--texts laion-alt-10k.jsonl] [--t 20 50 100]

Metadata: WordNet synset names (`vecap curate metadata`, Debian's wordnet-base).
Prints, per t, the median and quartiles of expected_kept(e) / t over the entries
matched by more than t texts.
"""

import argparse
import statistics
import sys
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vecap_cli.steps.curate import Matcher, entry_probabilities  # noqa: E402
from vecap_cli.steps.curate.balancing import expected_kept  # noqa: E402
from vecap_cli.steps.curate.metadata import Recipe, gather  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", default=str(REPO.parent / "shared/data/laion-alt-10k.jsonl"))
    parser.add_argument("--t", type=int, nargs="+", default=[20, 50, 100])
    args = parser.parse_args()
    texts = [orjson.loads(line).get("alt") for line in open(args.texts, "rb")]
    texts = [text for text in texts if isinstance(text, str)]
    entries, _ = gather(Recipe())
    found = Matcher(entries).find_many(texts)
    counts = [0] * len(entries)
    for ids in found:
        for e in ids:
            counts[e] += 1
    print(f"{len(texts):,} texts, {sum(map(bool, found)):,} matched, {len(entries):,} entries")
    for t in args.t:
        kept = expected_kept(found, entry_probabilities(counts, t))
        ratios = [kept[e] / t for e, c in enumerate(counts) if c > t]
        if len(ratios) < 2:
            print(f"t={t}: {len(ratios)} head entries, too few")
            continue
        q1, median, q3 = statistics.quantiles(ratios, n=4)
        print(
            f"t={t}: {len(ratios)} head entries, expected kept / t: median {median:.2f}, "
            f"quartiles {q1:.2f} .. {q3:.2f}"
        )


if __name__ == "__main__":
    main()

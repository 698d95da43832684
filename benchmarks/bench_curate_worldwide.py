"""`vecap curate --rule metaclip2` beside `--rule v1` end to end (issue 17).

Pool: bench_curate's (the 10k real LAION AltTexts repeated to --records, keys made
unique). v1 metadata: bench_curate's WordNet list (~150k entries). metaclip2
metadata: a folder with that list as en.json, and for every other language the
pool's language identification finds, a list built from the pool's own texts in
that language (its words seen at least twice, and for scripts without spaces its
two- and three-character pieces): a stand-in for MetaCLIP 2's Wikipedia lists,
which do not ship, sized so that most non-English texts match something.

Rows: records/s of each run (CPU time: user + system of the process, the fair
one on a shared machine; and wall), the ratio metaclip2 / v1 (goal >= 0.7,
language identification included), metaclip2 with each record's language given
(`--lang-key lang`: the pool with the language lid.176 finds written in, as
MetaCLIP 2's own curate.py reads `lang` from its shards; it must keep exactly the
records the identifying run keeps), and language identification alone in this
process (µs per text), the part of metaclip2's time v1 does not pay.

Needs ../shared/data/laion-alt-10k.jsonl and WordNet (Debian's wordnet-base).
"""

import argparse
import os
import platform
import time
from collections import Counter, defaultdict

import orjson
from bench_curate import LAION, WORK, make_metadata, make_pool, run_timed, vecap_cmd

from vecap_cli.steps.curate.langid import LanguageId
from vecap_cli.steps.curate.matching import unspaced


def world_metadata(v1_metadata) -> tuple[str, dict[str, int]]:
    """The metaclip2 folder: en.json = the v1 list; other languages from the pool."""
    lid = LanguageId()
    by_lang = defaultdict(Counter)
    for line in LAION.read_bytes().splitlines():
        text = orjson.loads(line).get("alt")
        if not isinstance(text, str):
            continue
        lang, _ = lid(text)
        words = by_lang[lang]
        words.update(text.split())
        wide = "".join(c if unspaced(c) else " " for c in text).split()
        for piece in wide:
            words.update(piece[i : i + n] for n in (2, 3) for i in range(len(piece) - n + 1))
    folder = WORK / "world-metadata"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    (folder / "en.json").write_bytes(v1_metadata.read_bytes())
    sizes = {"en": len(orjson.loads(v1_metadata.read_bytes()))}
    for lang, words in by_lang.items():
        entries = sorted(w for w, c in words.items() if c >= 2)
        if lang and lang != "en" and entries:
            (folder / f"{lang}.json").write_bytes(orjson.dumps(entries))
            sizes[lang] = len(entries)
    return str(folder), sizes


def given_pool(pool, n: int):
    """The pool with each record's language (lid.176's) in `lang`, found once per
    distinct LAION record: the pool repeats them in order."""
    lid = LanguageId()
    langs = []
    for line in LAION.read_bytes().splitlines():
        text = orjson.loads(line).get("alt")
        langs.append(lid(text)[0] if isinstance(text, str) else "")
    path = WORK / f"pool-{n}-lang.jsonl"
    with open(pool, "rb") as src, open(path, "wb") as f:
        for i, line in enumerate(src):
            record = orjson.loads(line)
            if langs[i % len(langs)]:
                record["lang"] = langs[i % len(langs)]
            f.write(orjson.dumps(record) + b"\n")
    return path


def lid_alone(pool) -> float:
    """µs per text of language identification over the pool's texts, in this process."""
    lid = LanguageId()
    texts = [orjson.loads(line)["alt"] for line in pool.read_bytes().splitlines()[:200_000]]
    texts = [t for t in texts if isinstance(t, str)]
    start = time.process_time()
    for text in texts:
        lid(text)
    return (time.process_time() - start) / len(texts) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--entries", type=int, default=150_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not LAION.exists() or not os.path.isdir("/usr/share/wordnet"):
        print("skipped: needs ../shared/data/laion-alt-10k.jsonl and wordnet-base")
        return
    WORK.mkdir(parents=True, exist_ok=True)
    n = args.records
    pool, _ = make_pool(n)
    metadata = make_metadata(args.entries)
    folder, sizes = world_metadata(metadata)
    given = given_pool(pool, n)
    runs = {
        "v1": vecap_cmd(pool, "--metadata", metadata, "-q", "-o", WORK / "out-v1.jsonl"),
        "metaclip2": vecap_cmd(
            pool, "--rule", "metaclip2", "--metadata", folder, "-q", "-o", WORK / "out-m2.jsonl"
        ),
        "metaclip2 --lang-key": vecap_cmd(
            given,
            "--rule",
            "metaclip2",
            "--metadata",
            folder,
            "--lang-key",
            "lang",
            "-q",
            "-o",
            WORK / "out-m2-given.jsonl",
        ),
    }
    best = {name: (float("inf"), float("inf")) for name in runs}
    for _ in range(args.rounds):
        for name, cmd in runs.items():  # alternately, so load on the machine hits both
            wall, cpu, _ = run_timed(cmd)
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    lid_us = lid_alone(pool)
    kept = {
        name: sum(1 for _ in open(WORK / f"out-{tag}.jsonl", "rb"))
        for name, tag in (("v1", "v1"), ("metaclip2", "m2"), ("metaclip2 --lang-key", "m2-given"))
    }
    if kept["metaclip2 --lang-key"] != kept["metaclip2"]:
        raise SystemExit(f"--lang-key kept other records: {kept}")
    langs = ", ".join(
        f"{lang} {size:,}" for lang, size in sorted(sizes.items(), key=lambda x: -x[1])[:8]
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"pool {n:,} records (LAION 10k repeated); v1 metadata {sizes['en']:,} entries; "
        f"metaclip2: {len(sizes)} languages ({langs}, ...); kept: v1 {kept['v1']:,}, "
        f"metaclip2 {kept['metaclip2']:,}"
    )
    print("| case | records/s | vs | ratio | goal |")
    print("|---|---:|---|---:|---:|")
    for name, what in (
        ("metaclip2", "`vecap curate --rule metaclip2`"),
        ("metaclip2 --lang-key", "`... --rule metaclip2 --lang-key lang` (languages given)"),
    ):
        for kind, i in (("CPU time", 1), ("wall", 0)):
            v1, m2 = best["v1"][i], best[name][i]
            print(
                f"| {what} end-to-end, 1 process ({kind}) | {n / m2:,.0f} "
                f"| `--rule v1` {n / v1:,.0f}/s | {v1 / m2:.2f} | >= 0.7 |"
            )
    print(f"| language identification alone (lid.176, one text a call) | {1e6 / lid_us:,.0f} | "
          f"{lid_us:.1f} µs a text | | |")  # fmt: skip
    print(
        "\nvecap times include process start, metadata load and the automaton builds; "
        "best of each over the rounds, the two commands run alternately."
    )


if __name__ == "__main__":
    main()

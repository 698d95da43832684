"""Balancing: P(keep) = 1 - prod(1 - p_e), p_e = min(1, t / count_e), draws by hash."""

import math
import random

import pytest

from vecap_cli.steps.curate.balancing import (
    Balancer,
    entry_probabilities,
    expected_kept,
    head_tail,
)


def test_entry_probabilities_are_metaclips():
    assert entry_probabilities([0, 5, 20, 40, 1000], t=20) == [1.0, 1.0, 1.0, 0.5, 0.02]


def test_keep_rate_matches_one_minus_the_product_on_a_synthetic_pool():
    counts = [100_000, 40_000, 25_000, 20_000, 500, 0]  # t = 20k: three head entries
    probs = entry_probabilities(counts, t=20_000)
    balancer = Balancer(probs, seed=11)
    rng = random.Random(0)
    groups = {(0,): [], (1,): [], (0, 1): [], (0, 1, 2): [], (2, 4): []}
    for i in range(60_000):
        ids = rng.choice(list(groups))
        groups[ids].append(balancer(f"k{i}", ids))
    for ids, results in groups.items():
        expected = 1 - math.prod(1 - probs[e] for e in ids)
        assert all(p == expected for p, _ in results)
        rate = sum(keep for _, keep in results) / len(results)
        sigma = math.sqrt(expected * (1 - expected) / len(results)) or 1e-9
        assert abs(rate - expected) < 4.5 * sigma, (ids, rate, expected)


def test_a_tail_entry_keeps_the_record_whatever_else_it_matches():
    balancer = Balancer([0.0001, 1.0], seed=0)
    assert all(balancer(f"k{i}", [0, 1]) == (1.0, True) for i in range(100))


def test_no_entries_no_keep():
    assert Balancer([0.5], seed=0)("k", []) == (0.0, False)


def test_draws_depend_on_seed_key_and_entry_only():
    balancer = Balancer([0.5, 0.5, 0.5], seed=3)
    keys = [f"k{i}" for i in range(400)]
    once = [balancer(k, [0])[1] for k in keys]
    assert once == [balancer(k, [0])[1] for k in keys]
    assert once != [Balancer([0.5] * 3, seed=4)(k, [0])[1] for k in keys]
    assert once != [balancer(k, [1])[1] for k in keys]  # each entry draws on its own
    assert 150 < sum(once) < 250


def test_head_tail_split():
    split = head_tail([0, 10, 30, 60], t=30)
    assert split["entries_matched"] == 3 and split["matches"] == 100
    assert split["head"] == {"entries": 2, "matches": 90, "share": 0.9}
    assert split["tail"]["entries"] == 1 and split["tail"]["matches"] == 10
    assert split["matches_capped_at_t"] == 10 + 30 + 30


def test_draws_are_rand_uniform_of_seed_key_and_entry():
    from vecap_cli.rand import uniform

    probs = [0.3, 0.6, 0.9]
    balancer = Balancer(probs, seed=7)
    for i in range(300):
        key = f"k{i}" if i % 2 else i  # an integer key draws as its string
        expected = any(uniform(7, str(key), e) < probs[e] for e in (0, 1, 2))
        assert balancer(key, [0, 1, 2])[1] == expected


def test_a_head_entry_keeps_more_than_t_through_other_entries():
    """What --t's help says: not capped at t. Entry 0 is in every record (count 2000,
    p = 0.05: its own draws keep 100 = t); the records also match one of 40 tail
    entries (p = 1), which keep them all."""
    matched = [[0, 1 + i % 40] for i in range(2000)]
    counts = [2000] + [50] * 40
    kept = expected_kept(matched, entry_probabilities(counts, t=100))
    assert kept[0] == pytest.approx(2000)  # 20x t: every record is kept through its tail entry
    alone = expected_kept([[0]] * 2000, entry_probabilities([2000], t=100))
    assert alone[0] == pytest.approx(100)  # t, when nothing else keeps its records


def test_curate_help_and_report_say_what_t_does_not_cap():
    import typer

    from vecap_cli.cli.curate import curate_app
    from vecap_cli.steps.curate.counts import EntryCounts
    from vecap_cli.steps.curate.report import describe

    report = describe(EntryCounts("s", 3, {}, 100, 90, [80, 30, 5]), 20)
    assert "capped at t" not in report and "a floor, not what balancing keeps" in report
    group = typer.main.get_command(curate_app)
    for name in ("run", "balance", "report"):
        command = group.commands[name]
        (t,) = [p for p in command.params if p.name == "t"]
        assert "sub-sampled to t" not in t.help and "capped" not in t.help
        assert "records kept through their other entries add more" in t.help
    assert "capped at t" not in group.help

"""`vecap curate`: MetaCLIP curation ("Demystifying CLIP Data", arXiv 2309.16671).

Match each text against metadata entries (matching.py), count the records per
entry (counts.py), then keep a record when any matched entry passes its draw with
p_e = min(1, t / count_e) (balancing.py). stages.py chains these as stream
stages; metadata.py reads and builds entry lists; report.py describes counts.
MetaCLIP 2 (`--rule metaclip2`): language identification (langid.py), lists and
a t per language (worldwide.py); several texts per record (texts.py).
"""

from vecap_cli.steps.curate.balancing import Balancer, entry_probabilities, head_tail
from vecap_cli.steps.curate.counts import Accumulator, EntryCounts, merge, read_counts, write_counts
from vecap_cli.steps.curate.matching import Matcher, can_match, spacing
from vecap_cli.steps.curate.metadata import Metadata, read_metadata
from vecap_cli.steps.curate.stages import (
    CurateConfig,
    MatchCache,
    balance,
    count,
    prepare,
)

__all__ = [
    "Accumulator",
    "Balancer",
    "CurateConfig",
    "EntryCounts",
    "MatchCache",
    "Matcher",
    "Metadata",
    "balance",
    "can_match",
    "count",
    "entry_probabilities",
    "head_tail",
    "merge",
    "prepare",
    "read_counts",
    "read_metadata",
    "spacing",
    "write_counts",
]

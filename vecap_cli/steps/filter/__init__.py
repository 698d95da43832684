"""`vecap filter`: keep or drop records by what a model, or a plain rule, says of them.

- score.py: `filter.clip_score`, the cosine of a CLIP model's image and text
  embeddings, with `--min-score` and DataComp's basic image and caption rules
  (rules.py) on the way;
- histogram.py: the scores of a pool in fixed fine bins, one file per rank, that
  add up: the first pass of a top fraction that shards;
- select.py: the second pass, the records at or above the global threshold;
- dedup.py, hashes.py: `vecap filter dedup`, exact, perceptual (pHash) and
  semantic (SemDeDup) duplicates, each drop naming the record it duplicates.
"""

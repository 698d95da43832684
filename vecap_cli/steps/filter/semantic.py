"""SemDeDup (Abbas et al., arXiv 2303.09540), as NeMo Curator runs it: cluster the
image embeddings with k-means, then, within each cluster, pair the records whose
cosine similarity is above 1 - eps; `survivors.greedy` keeps the better of each
pair. Clustering is what makes it affordable: a cluster of k records costs k²
cosines, the pool as one would cost N².

k-means is scikit-learn's (Lloyd, one k-means++ start drawn from the seed), so a
run is the same for a seed; embeddings come from the model `vecap eval` loads,
through its Encoder (`embedder`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np

from vecap_cli.rand import uniform

_BLOCK_ROWS = 4096  # rows of a cluster's similarity matrix at once: 4096 x k floats


def default_clusters(n: int) -> int:
    """sqrt(N) clusters of about sqrt(N) records: N^1.5 cosines in all."""
    return max(1, round(math.sqrt(n)))


def cluster(embeddings: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """(N,) cluster labels of the (N, D) embeddings: k-means, seeded."""
    n = len(embeddings)
    k = min(n_clusters, n)
    if k <= 1:
        return np.zeros(n, np.int64)
    from sklearn.cluster import KMeans

    state = int(uniform(seed, "semdedup-kmeans") * 2**31)
    km = KMeans(n_clusters=k, n_init=1, random_state=state)
    return km.fit_predict(embeddings.astype(np.float32, copy=False)).astype(np.int64)


def similar_pairs(
    embeddings: np.ndarray, labels: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """(i, j), i < j: pairs in one cluster whose cosine is above `threshold`
    (embeddings L2-normalized, (N, D))."""
    found_i, found_j = [], []
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.r_[True, labels[order][1:] != labels[order][:-1], True])
    for lo, hi in itertools.pairwise(bounds):
        members = order[lo:hi]  # (k,)
        if len(members) < 2:
            continue
        vectors = embeddings[members]  # (k, D)
        for row in range(0, len(members), _BLOCK_ROWS):
            sims = vectors[row : row + _BLOCK_ROWS] @ vectors.T  # (b, k)
            a, b = np.nonzero(sims > threshold)
            a += row
            keep = a < b
            found_i.append(members[a[keep]])
            found_j.append(members[b[keep]])
    if not found_i:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    i, j = np.concatenate(found_i), np.concatenate(found_j)
    return np.minimum(i, j).astype(np.int64), np.maximum(i, j).astype(np.int64)


def semantic_pairs(
    embeddings: np.ndarray, eps: float, n_clusters: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """SemDeDup's duplicate pairs: cosine above 1 - eps within a k-means cluster."""
    k = default_clusters(len(embeddings)) if n_clusters is None else n_clusters
    return similar_pairs(embeddings, cluster(embeddings, k, seed), 1.0 - eps)


class Embedder:
    """Image embeddings from a model `vecap eval` loads: its preprocessing, and its
    Encoder's batched forward (AMP on GPU, L2-normalized float32)."""

    def __init__(
        self,
        model: str,
        pretrained: str | None,
        tokenizer: str | None,
        device: str | None,
        batch_size: int,
        placement,
        seed: int,
        log: Callable[[str], None],
    ):
        from vecap_cli.eval.embed import Encoder
        from vecap_cli.eval.models import load_model
        from vecap_cli.process_group import pick_device

        torch_device = pick_device(device, placement)
        loaded = load_model(model, pretrained, tokenizer, torch_device, seed, log)
        self.preprocess = loaded.preprocess  # PIL image -> (3, H, W), in decoding threads
        self.encoder = Encoder(loaded.model, loaded.tokenizer, torch_device)
        self.batch_size = batch_size

    def images(self, pixels: list) -> np.ndarray:
        """(B, D) float32 embeddings of B preprocessed images."""
        import torch

        return self.encoder.images(torch.stack(pixels)).numpy()

"""Propagation math: pixel-pair affinities and random walks on the affinity graph.

- :mod:`pipeline.propagation.affinity`    pairs within a radius (PSA half disc), predicted
  affinities ``exp(-mean |f_i - f_j|)``, pair labels (bg-pos / fg-pos / neg, with ignore
  and RETAB's valid-pixel mask) and the AffinityNet loss (torch).
- :mod:`pipeline.propagation.random_walk` transition matrices, PSA's single-stage walk and
  RETAB's boundary-aware two-stage walk, sparse (fast) and dense (reference) forms
  (numpy / scipy.sparse; the sparse steps run on torch's CSR product).
"""
from pipeline.propagation.affinity import (
    affinity_loss,
    pair_index_arrays,
    pair_indices,
    pair_labels,
    pair_offsets,
    pairwise_affinity,
)
from pipeline.propagation.random_walk import (
    affinity_matrix,
    background_channel,
    dense_affinity_matrix,
    psa_random_walk,
    random_walk_dense,
    random_walk_sparse,
    transition_from_affinity,
    two_stage_edge_masks,
    two_stage_random_walk,
    validate_propagation_params,
)

__all__ = [
    "affinity_loss", "pair_index_arrays", "pair_indices", "pair_labels", "pair_offsets",
    "pairwise_affinity", "affinity_matrix", "background_channel", "dense_affinity_matrix",
    "psa_random_walk", "random_walk_dense", "random_walk_sparse", "transition_from_affinity",
    "two_stage_edge_masks", "two_stage_random_walk", "validate_propagation_params",
]

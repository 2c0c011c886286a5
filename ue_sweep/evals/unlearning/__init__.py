"""SISA training and machine unlearning (Bourtoule et al., "Machine Unlearning", IEEE S&P 2021).

``partition``: shards, slices, the epochs of each slice and unlearning requests; ``aggregate``:
the ensemble's label by majority vote and by mean posterior; ``ensemble``: constituent models
trained slice by slice, each slice's state an artifact named by the exact indices it has seen,
spread over the job's ranks. ``ue_sweep/evals/unlearning.py`` runs them as ``evals=[unlearning]``.
"""

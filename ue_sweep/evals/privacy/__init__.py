"""DP-SGD victims (Opacus) on possibly imbalanced data: DP-safe models, the private training
loop, and the evaluation (``evaluation.py``)."""

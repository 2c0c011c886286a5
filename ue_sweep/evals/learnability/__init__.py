"""Learnability metrics of a trained victim (Ye, Su, Qian, "How Far Are We from True
Unlearnability?", ICLR 2025): Sharpness-Aware Learnability (SAL) per layer and epoch, the
learnable threshold beta, the number of learnable parameters #LP and the Unlearnable Distance UD.

``search``: the projected SGD search of one layer's SAL; ``metrics``: beta, #LP, UD from SAL
tables; ``heatmap``: the layers x epochs picture of a table. The evaluation that runs them on a
job's victims is ``ue_sweep/evals/learnability.py``.
"""

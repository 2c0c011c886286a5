"""`make bench`: side-by-side measurements of ue-sweep's speed claims (``python -m benchmarks``).

Every ratio in the printed table compares two variants measured in the same run, interleaved,
so a busy machine slows both alike; the raw figures go to ``benchmarks/results/``.
"""

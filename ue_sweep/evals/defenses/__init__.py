"""Defenses against unlearnable examples (EPIC, image shortcut squeezing, adversarial training,
UEraser) and the evaluation that trains them (``evaluation.py``)."""

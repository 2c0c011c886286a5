"""Presentation: statistics and tables of results, figures, the W&B dashboard."""

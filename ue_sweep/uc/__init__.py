"""Unlearnable Clusters: surrogate features -> k-means -> cluster generators -> protected data."""

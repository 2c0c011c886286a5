"""Datasets as uint8 image tensors, and the batching that feeds them to the training stages."""

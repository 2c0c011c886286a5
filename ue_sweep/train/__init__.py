"""Classifier training (victims, fitted surrogates) and exact distributed evaluation."""

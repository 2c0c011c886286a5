"""Feature-returning classifiers (surrogates, victims) and the cluster generator bank."""

"""The model stages (distill -> prune -> quantize) over one cached-step loop in chain.py, and the training engine."""

"""Evaluation: metrics with confidence intervals, classical baselines, the simulator's oracle."""

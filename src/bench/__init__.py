"""Benchmarks (python -m src.bench.<name>): outside the stage namespace, never shipped to Kaggle."""

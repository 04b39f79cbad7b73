"""Kaggle packaging: the offline inference bundle."""

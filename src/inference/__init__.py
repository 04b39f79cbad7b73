"""Prediction with trained runs: fold models, TTA, gating, whole-split prediction."""

"""Synthetic abdominal MRI in the exact Kaggle layout (the project's default data when no download exists).

anatomy: a case's organ shapes and their day-to-day motion; renderer: anatomy -> 16-bit slices and
true masks; faults: label faults (ambiguous tail, spoilt case-days); planning: which case-days at
which sizes; writer: `generate`, the dataset and its test truth on disk; values: parsers of the
command-line values.
"""
from src.data.synthetic.values import parse_size, parse_sizes, parse_slices
from src.data.synthetic.writer import SyntheticSummary, generate

__all__ = ["SyntheticSummary", "generate", "parse_size", "parse_sizes", "parse_slices"]

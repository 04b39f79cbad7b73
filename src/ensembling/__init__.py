"""The ensemble: its parameters, the one path from probabilities to masks, the OOF search, tuning and submission."""

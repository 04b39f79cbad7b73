"""The competition metric and the scoring of submission files."""

"""The bottom layer: errors and the CLI wrapper, atomic writes, ids and classes, seeding, and the
one owner of every artifact's on-disk layout (src.core.artifacts). Imports nothing of the project."""

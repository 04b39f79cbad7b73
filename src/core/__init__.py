"""The bottom layer: errors and the CLI wrapper, atomic writes, ids and classes, seeding, the output
guard (src.core.outputs), the JSON/TOML reader (src.core.readers), and the one owner of every
artifact's on-disk layout (src.core.artifacts). Imports nothing of the project."""

"""Research tooling: the UNet studies as library calls (benchmark of archs, ablations over repeated
splits, pruning sensitivity); their CLIs are src/benchmark.py, src/ablate.py and src/prune.py."""

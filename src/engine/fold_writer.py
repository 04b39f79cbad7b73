"""Where a training writes: never into the trained fold itself.

Every training of fold<k> holds the fold's lock (src.core.lock: one writer per fold) and writes into
the staging folder fold<k>.staging/, which replaces fold<k>/ only once complete (its done marker
written). Until then fold<k>/ stays exactly as it was and predict/tune keep using it, whatever
happens to the new training (a bad flag, an exception, kill -9).

The resume rule (`plan_training`), in order:

- without --resume: a fresh training; a leftover staging folder is discarded.
- --resume, the staging folder has a resume state (last.pt) and no done marker: continue it.
- --resume, the fold itself is unfinished with a resume state (trained in place by older code):
  it becomes the staging folder and continues.
- --resume, the fold is done: nothing to train; its recorded score stands.
- --resume otherwise: a fresh training.

Whatever is continued or returned must have been trained with the same config. A staging folder
with a done marker is never continued: it is a training killed between its done marker and the swap,
or, after an interrupted swap, the old fold (src.core.atomic.swap_dir); either way it is discarded,
so an interruption may lose the newer training, never the older one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import shutil
from enum import Enum
from typing import Iterator

from src.core.artifacts import FoldDir
from src.core.errors import DataError
from src.core.lock import exclusive_lock


class Plan(Enum):
    FRESH = "fresh"
    CONTINUE = "continue"  # the staging folder's last.pt
    ADOPT = "adopt"  # the unfinished fold's own last.pt, moved to the staging folder first
    DONE = "done"  # nothing to train


def changed_fields(fold: FoldDir, cfg) -> list[str]:
    """The config fields that differ from those `fold` was trained with (a field added since: its default)."""
    previous = fold.read_config().config
    current = dataclasses.asdict(cfg)
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    return sorted(k for k in set(previous) | set(current) if previous.get(k, defaults.get(k)) != current.get(k))


def _check_same_config(fold: FoldDir, cfg) -> None:
    changed = changed_fields(fold, cfg) if fold.config_path.exists() else []
    if changed:
        raise DataError(f"{fold.config_path}: --resume with a different config (changed: {', '.join(changed)})")


def plan_training(fold: FoldDir, cfg, resume: bool) -> Plan:
    """What a training of `fold` does (the rule of the module docstring); reads only, writes nothing."""
    staging, final = fold.staging, fold.final
    if not resume:
        return Plan.FRESH
    if staging.last.is_file() and not staging.is_done():
        plan, source = Plan.CONTINUE, staging
    elif final.last.is_file() and not final.is_done():
        plan, source = Plan.ADOPT, final
    elif final.is_done():
        plan, source = Plan.DONE, final
    else:
        return Plan.FRESH
    _check_same_config(source, cfg)
    return plan


def open_staging(fold: FoldDir, plan: Plan) -> FoldDir:
    """The staging folder a training of `plan` writes into, made ready; the fold is left as it is."""
    staging = fold.staging
    if plan is Plan.FRESH:
        shutil.rmtree(staging.path, ignore_errors=True)
    elif plan is Plan.ADOPT:
        shutil.rmtree(staging.path, ignore_errors=True)
        fold.final.path.rename(staging.path)
    staging.path.mkdir(parents=True, exist_ok=True)
    return staging


@contextlib.contextmanager
def fold_lock(fold: FoldDir, held: bool = True) -> Iterator[None]:
    """The fold's lock for the block (`held` False: a process that does not write, e.g. a DDP rank > 0)."""
    if not held:
        yield
        return
    with exclusive_lock(fold.lock_path, f"fold {fold.fold} of run {fold.run.name}"):
        yield

"""The recipe schema: every section and key a recipe may hold, with its type, checked before any
step runs. An unknown section or key, a wrong type or a missing required key is one line naming the
recipe file, the section and the key, with the valid names."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from src.core.errors import DataError
from src.core.outputs import check_name
from src.engine.stages import get_stage, stage_names
from src.inference.tta import parse_tta

ANY_FOLDS = (list,)
# section -> key -> accepted types; a key in REQUIRED must be present.
SECTIONS: dict[str, dict[str, tuple[type, ...]]] = {
    "data": {"dir": (str,), "format": (str,), "synthetic": (dict,)},
    "folds": {"n_folds": (int,), "seed": (int,), "out": (str,), "exclude": (str, list)},
    "ensemble": {"runs": (list,), "gate": (str,), "crop": (str,), "out": (str,), "passes": (int,),
                 "holdout_folds": (str, list), "min_gain": (int, float), "workers": (int,), "cache_dir": (str,),
                 "memory_gb": (int, float), "stride": (int,), "screen": (int,), "allow_incomplete": (bool,)},
    "submit": {"out": (str,), "truth": (str,), "device": (str,), "batch_size": (int,),
               "allow_train_fallback": (int,), "runs_root": (str,), "allow_incomplete": (bool,)},
    "report": {"out": (str,), "enabled": (bool,)},
    "ablation": {"base": (str,), "vary": (list,), "repeats": (int,), "split": (str,), "val_fraction": (int, float),
                 "seed": (int,), "confidence": (float,), "out": (str,)},
}
# every generator's keys (src.make_synthetic's flags); which a format takes is checked by its generator
SYNTHETIC = {"cases": (int,), "seed": (int,), "test_cases": (int,), "truth_out": (str,), "sizes": (str,),
             "slices": (str,), "ambiguous_tail": (int,), "bad_case_day": (str, list), "workers": (int,),
             "size": (str,), "cars": (int,), "test_cars": (int,), "views": (int,), "images": (int,),
             "unlabelled": (int,), "channels": (int,), "classes": (int,)}
TOP = {"name": (str,), "compare": (list,), "models": (list,), **{s: (dict,) for s in SECTIONS}}
REQUIRED = {"": ("data",), "data": ("dir",), "ablation": ("base",)}
RESOURCE_KEYS = ("cpus", "gpus")  # what a training step takes (--executor ray): not training flags
# a [[models]] entry's keys that are not training flags: resources, and `tta`: its OOF predicted again with
# these flips after training (src.predict --split oof), which the ensemble then tunes on and submits with
MODEL_KEYS = {"name": (str,), "stage": (str,), "arch": (str,), "folds": (list,), "tta": (str,),
              **{k: (int,) for k in RESOURCE_KEYS}}
NOT_TRAINING = ("name", "folds", "tta", *RESOURCE_KEYS)
# config fields the pipeline sets itself for every training step
SET_BY_PIPELINE = {"stage", "arch", "name", "fold", "data_dir", "folds_csv", "out"}
_PY_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def _type_name(kinds: tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in kinds)


def _check_table(path: Path, where: str, table: dict, schema: dict[str, tuple[type, ...]],
                 required: tuple[str, ...] = ()) -> None:
    for key in required:
        if key not in table:
            raise DataError(f"{path}: {where} lacks the required key {key!r}")
    for key, value in table.items():
        if key not in schema:
            raise DataError(f"{path}: {where} unknown key {key!r} (valid: {', '.join(sorted(schema))})")
        kinds = schema[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise DataError(f"{path}: {where} {key} = {value!r}: expected {_type_name(kinds)}")


def model_schema(stage: str) -> dict[str, tuple[type, ...]]:
    """The keys a [[models]] entry of `stage` may hold: name, stage, arch, folds and its config's fields."""
    fields = {f.name: _PY_TYPES[str(f.type)] for f in dataclasses.fields(get_stage(stage).config)
              if f.name not in SET_BY_PIPELINE}
    return {**MODEL_KEYS, **fields}


def _check_data(path: Path, data: dict) -> None:
    """[data]: a known format; [data.synthetic]: keys of the generator of that format (GI by default)."""
    from src.data.formats import FORMAT_MODULES
    from src.data.synthetic2d import check_options

    if data.get("format", "gi") not in FORMAT_MODULES:
        raise DataError(f"{path}: [data] format = {data['format']!r}: known formats are {', '.join(FORMAT_MODULES)}")
    if "synthetic" in data:
        _check_table(path, "[data.synthetic]", data["synthetic"], SYNTHETIC)
        try:
            # the recipe key bad_case_day is the flag --bad-case-day, which fills the generator's bad_case_days
            check_options(data.get("format", "gi"), {("bad_case_days" if k == "bad_case_day" else k): v
                                                     for k, v in data["synthetic"].items()})
        except DataError as exc:
            raise DataError(f"{path}: [data.synthetic]: {exc}") from None


def validate_recipe(path: Path, raw: dict) -> None:
    """DataError on the first thing in `raw` that the schema does not allow."""
    _check_table(path, "recipe:", raw, TOP, REQUIRED[""])
    for section, schema in SECTIONS.items():
        if section in raw:
            _check_table(path, f"[{section}]", raw[section], schema, REQUIRED.get(section, ()))
    _check_data(path, raw["data"])
    if "ablation" not in raw and not raw.get("models"):
        raise DataError(f"{path}: no [[models]] and no [ablation]: name at least one model, or a study")
    if raw.get("models") and "folds" not in raw:
        raise DataError(f"{path}: recipe: lacks the required key 'folds' (the models are trained on folds)")
    if "ablation" in raw and not all(isinstance(v, str) for v in raw["ablation"].get("vary", [])):
        raise DataError(f"{path}: [ablation] vary: expected a list of texts such as \"lr=1e-3,3e-3\"")
    names = []
    for i, model in enumerate(raw.get("models", []), 1):
        where = f"[[models]] {i}"
        if not isinstance(model, dict):
            raise DataError(f"{path}: {where} is not a table")
        _check_table(path, where, {k: v for k, v in model.items() if k in MODEL_KEYS}, MODEL_KEYS,
                     ("name", "stage", "arch"))
        check_name(model["name"], f"{path}: {where} name")
        if model["stage"] not in stage_names():
            raise DataError(f"{path}: {where} stage {model['stage']!r}: valid stages are {', '.join(stage_names())}")
        _check_table(path, f"{where} ({model['name']})", model, model_schema(model["stage"]))
        folds = model.get("folds", [0])
        if not folds or not all((isinstance(f, int) and not isinstance(f, bool) and f >= 0) or f == "all" for f in folds):
            raise DataError(f"{path}: {where} ({model['name']}) folds = {folds!r}: expected a list of fold numbers or 'all'")
        if model.get("cpus", 1) < 1 or model.get("gpus", 0) < 0:
            raise DataError(f"{path}: {where} ({model['name']}) cpus = {model.get('cpus', 1)}, gpus = "
                            f"{model.get('gpus', 0)}: cpus must be at least 1, gpus at least 0")
        if model.get("gpus", 0) > 1 and model["stage"] == "det":  # ultralytics runs its own DDP
            raise DataError(f"{path}: {where} ({model['name']}) gpus = {model['gpus']}: the detector trains on one GPU")
        try:  # the values themselves, as the stage's config checks them
            get_stage(model["stage"]).config(**{k: v for k, v in model.items() if k not in NOT_TRAINING})
            parse_tta(model.get("tta"))
        except DataError as exc:
            raise DataError(f"{path}: {where} ({model['name']}): {exc}") from None
        names.append(model["name"])
    duplicate = sorted({n for n in names if names.count(n) > 1})
    if duplicate:
        raise DataError(f"{path}: [[models]] name {duplicate[0]!r} is used twice")
    for key in ("gate", "crop"):
        if raw.get("ensemble", {}).get(key) and raw["ensemble"][key] not in names:
            raise DataError(f"{path}: [ensemble] {key} = {raw['ensemble'][key]!r} names no model "
                            f"(models: {', '.join(names)})")
    for run in raw.get("ensemble", {}).get("runs", []):
        if run not in names:
            raise DataError(f"{path}: [ensemble] runs: {run!r} names no model (models: {', '.join(names)})")

"""The ensemble file, typed: `Ensemble` (members, auxiliary runs, parameters) read by `load_ensemble`
and written by `write_ensemble_file`; the kernel, submit, report, benchmarks and pipeline read it here.

    {"version": 2,
     "dims": "2d",                                                          2D ensembles only
     "runs": [{"name", "path", "stage", "group", "folds": [...], "predict": PredictSettings}, ...],
     "auxiliary": [{"path", "stage", "folds": [...], "tta": [...]}, ...],   every gate or crop run used
     "gate": path | null, "crop": path | null,                              the ensemble's own
     "params": EnsembleParams (2D: ImageEnsembleParams), "scores": ..., "oof": ..., "search": ...}

Every run the ensemble needs at test time is described once, with the folds and TTA it predicts
with; a member's `predict` names its gate and crop runs by path, so a run used only as a member's
gate predicts exactly as its out-of-fold predictions did.

A 2D ensemble (src.ensembling.tune2d) says so with "dims": "2d"; it has no crop run, its members no gate
or crop of their own, and its "gate" (a classifier of the images, its one auxiliary run) is there exactly
when its parameters gate; its "params" are ImageEnsembleParams (src.ensembling.params2d). `Ensemble.dims`
tells them apart; a file without "dims" is a GI ensemble, read as before.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from src.core.artifacts import ENSEMBLE_VERSION, read_ensemble, write_ensemble
from src.core.errors import DataError
from src.engine.stages import get_stage
from src.ensembling.params import GROUPS, EnsembleParams
from src.ensembling.params2d import ImageEnsembleParams
from src.inference.runs import TrainedRun
from src.inference.settings import PredictSettings, read_tta


def _text(value, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: expected a non-empty text, got {value!r}")
    return value


def _folds(value, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(f, (str, int)) and not isinstance(f, bool) for f in value):
        raise DataError(f"{where}: expected a list of fold names, got {value!r}")
    return tuple(str(f) for f in value)


def _stage(value, where: str, outputs: tuple[str, ...]) -> str:
    name = _text(value, where)
    try:
        stage = get_stage(name)
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None
    if stage.output not in outputs:
        raise DataError(f"{where}: a {name} run predicts {stage.output}, expected {' or '.join(outputs)}")
    return name


def _object(value, where: str, keys: tuple[str, ...]) -> dict:
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected an object with {', '.join(keys)}")
    missing = [k for k in keys if k not in value]
    if missing:
        raise DataError(f"{where}: missing key(s) {', '.join(missing)}")
    return value


@dataclass(frozen=True)
class AuxiliaryRun:
    """A classifier gate or detector crop run: the folds and TTA it predicts with."""

    path: str
    stage: str
    folds: tuple[str, ...]
    tta: tuple[str, ...]

    @classmethod
    def of(cls, run: TrainedRun) -> AuxiliaryRun:
        """As its saved out-of-fold predictions were made (their TTA; every numbered fold)."""
        manifest = run.manifest("oof") or {}
        return cls(str(run.path), run.stage.name, tuple(run.numbered_folds),
                   read_tta(manifest.get("tta"), f"{run.dir.predictions('oof').manifest_path}.tta"))

    @property
    def output(self) -> str:
        return get_stage(self.stage).output

    def to_dict(self) -> dict:
        return {"path": self.path, "stage": self.stage, "folds": list(self.folds), "tta": list(self.tta)}

    @classmethod
    def from_dict(cls, value, where: str) -> AuxiliaryRun:
        value = _object(value, where, ("path", "stage", "folds", "tta"))
        return cls(_text(value["path"], f"{where}.path"), _stage(value["stage"], f"{where}.stage", ("presence", "box")),
                   _folds(value["folds"], f"{where}.folds"), read_tta(value["tta"], f"{where}.tta"))


@dataclass(frozen=True)
class EnsembleMember:
    """A segmenter of the blend: its run, blend group, folds, and how it predicts (as its OOF did)."""

    name: str
    path: str
    stage: str
    group: str
    folds: tuple[str, ...]
    predict: PredictSettings

    @classmethod
    def of(cls, run: TrainedRun) -> EnsembleMember:
        """A segmenter run as a member, predicting as its saved OOF predictions did (their manifest)."""
        if not run.stage.segmenter:
            raise DataError(f"{run.path}: a {run.stage.name} run predicts {run.stage.output}, not probabilities "
                            f"(pass a classifier with --gate, a detector with --crop)")
        manifest = run.manifest("oof") or {}
        settings = PredictSettings.from_dict({k: manifest.get(k) for k in ("tta", "crop", "gate", "gate_threshold",
                                                                           "gate_rule")},
                                             str(run.dir.predictions("oof").manifest_path))
        return cls(run.name, str(run.path), run.stage.name, run.stage.group, tuple(run.numbered_folds), settings)

    def to_dict(self) -> dict:
        return {"name": self.name, "path": self.path, "stage": self.stage, "group": self.group,
                "folds": list(self.folds), "predict": self.predict.to_dict()}

    @classmethod
    def from_dict(cls, value, where: str) -> EnsembleMember:
        value = _object(value, where, ("name", "path", "stage", "group", "folds", "predict"))
        group = value["group"]
        if group not in GROUPS:
            raise DataError(f"{where}.group: {group!r}, expected one of {', '.join(GROUPS)}")
        return cls(_text(value["name"], f"{where}.name"), _text(value["path"], f"{where}.path"),
                   _stage(value["stage"], f"{where}.stage", ("probabilities",)), group,
                   _folds(value["folds"], f"{where}.folds"), PredictSettings.from_dict(value["predict"], f"{where}.predict"))


@dataclass(frozen=True)
class RunUse:
    """How one run the ensemble needs predicts at test time."""

    path: str
    folds: tuple[str, ...]  # () = every numbered fold
    tta: tuple[str, ...]


@dataclass(frozen=True)
class Ensemble:
    """A loaded ensemble.json."""

    path: Path
    members: tuple[EnsembleMember, ...]
    auxiliary: tuple[AuxiliaryRun, ...]
    gate: AuxiliaryRun | None
    crop: AuxiliaryRun | None
    params: EnsembleParams | ImageEnsembleParams
    record: dict  # the whole file, scores included

    @property
    def dims(self) -> str:
        """The data its runs segment, as a dataset description's dims: "2d" (images) or "slices" (the GI)."""
        return "2d" if isinstance(self.params, ImageEnsembleParams) else "slices"

    def run_uses(self) -> dict[str, RunUse]:
        """Every run the ensemble needs at test time, once each, in order: each member then its gate
        and crop runs, then the ensemble's own gate and crop."""
        aux = {a.path: a for a in self.auxiliary}
        uses = {}
        for m in self.members:
            uses.setdefault(m.path, RunUse(m.path, m.folds, m.predict.tta))
            for path in m.predict.runs():
                uses.setdefault(path, RunUse(path, aux[path].folds, aux[path].tta))
        for a in (self.gate, self.crop):
            if a is not None:
                uses.setdefault(a.path, RunUse(a.path, a.folds, a.tta))
        return uses

    def run_paths(self) -> list[str]:
        return list(self.run_uses())


def _auxiliary_of(runs: dict[str, AuxiliaryRun], path: str | None, where: str, output: str) -> AuxiliaryRun | None:
    if path is None:
        return None
    if not isinstance(path, str) or path not in runs:
        raise DataError(f"{where}: run {path!r} is not described under 'auxiliary'")
    if runs[path].output != output:
        raise DataError(f"{where}: {path} is a {runs[path].stage} run, expected one that predicts {output}")
    return runs[path]


def _members(record: dict, source: str) -> tuple[EnsembleMember, ...]:
    runs = record["runs"]
    if not isinstance(runs, list) or not runs:
        raise DataError(f"{source}: 'runs' must be a non-empty list of members")
    return tuple(EnsembleMember.from_dict(r, f"{source}: runs[{i}]") for i, r in enumerate(runs))


def _check_names(members: tuple[EnsembleMember, ...], weights: dict, source: str) -> None:
    names = [m.name for m in members]
    if len(set(names)) != len(names) or sorted(names) != sorted(weights):
        raise DataError(f"{source}: runs {names} do not match the weighted models {sorted(weights)}")


def _load_images(file, source: str) -> Ensemble:
    """A 2D ensemble: members without gate or crop runs of their own, ImageEnsembleParams weighing exactly
    them; the ensemble's gate (a classifier of the images) when, and only when, the parameters gate."""
    record = file.record
    members = _members(record, source)
    for i, m in enumerate(members):
        if m.predict.runs():
            raise DataError(f"{source}: runs[{i}].predict: a 2D member has no gate or crop run")
    if record.get("crop") is not None:
        raise DataError(f"{source}: a 2D ensemble has no crop run")
    aux_list = record.get("auxiliary", [])
    if not isinstance(aux_list, list) or len(aux_list) > 1:
        raise DataError(f"{source}: 'auxiliary' of a 2D ensemble is a list of at most its gate run")
    auxiliary = tuple(AuxiliaryRun.from_dict(a, f"{source}: auxiliary[{i}]") for i, a in enumerate(aux_list))
    gate = _auxiliary_of({a.path: a for a in auxiliary}, record.get("gate"), f"{source}: gate", "presence")
    if len(auxiliary) != (gate is not None):
        raise DataError(f"{source}: 'auxiliary' describes a run that 'gate' does not name")
    if not isinstance(record["params"], dict):
        raise DataError(f"{source}: 'params' must be an object")
    params = ImageEnsembleParams.from_dict(record["params"], source)
    _check_names(members, params.weights, source)
    if params.gated != (gate is not None):
        raise DataError(f"{source}: params.gate_threshold " + ("gates on a classifier but 'gate' names no run"
                                                               if params.gated else "is off but 'gate' names a run"))
    return Ensemble(file.path, members, auxiliary, gate, None, params, record)


def load_ensemble(path: str | Path) -> Ensemble:
    """Read and check an ensemble file: every key typed, every referenced run described, parameters in range."""
    file = read_ensemble(path)
    record, source = file.record, str(file.path)
    dims = record.get("dims")
    if dims == "2d":
        return _load_images(file, source)
    if dims is not None:
        raise DataError(f"{source}: dims {dims!r}, expected \"2d\" (or none: a GI ensemble)")
    members = _members(record, source)
    aux_list = record.get("auxiliary", [])
    if not isinstance(aux_list, list):
        raise DataError(f"{source}: 'auxiliary' must be a list")
    auxiliary = tuple(AuxiliaryRun.from_dict(a, f"{source}: auxiliary[{i}]") for i, a in enumerate(aux_list))
    by_path = {a.path: a for a in auxiliary}
    if len(by_path) != len(auxiliary):
        raise DataError(f"{source}: 'auxiliary' describes a run twice")
    for i, m in enumerate(members):
        _auxiliary_of(by_path, m.predict.gate, f"{source}: runs[{i}].predict.gate", "presence")
        _auxiliary_of(by_path, m.predict.crop, f"{source}: runs[{i}].predict.crop", "box")
    gate = _auxiliary_of(by_path, record.get("gate"), f"{source}: gate", "presence")
    crop = _auxiliary_of(by_path, record.get("crop"), f"{source}: crop", "box")
    if not isinstance(record["params"], dict):
        raise DataError(f"{source}: 'params' must be an object")
    params = EnsembleParams.from_dict(record["params"], source)
    _check_names(members, params.weights, source)
    if {m.name: m.group for m in members} != params.groups:
        raise DataError(f"{source}: the runs' blend groups do not match params.groups")
    if any(t > 0 for t in params.gate_threshold) and gate is None:
        raise DataError(f"{source}: params.gate_threshold gates on a classifier but 'gate' names no run")
    if params.crop and crop is None:
        raise DataError(f"{source}: params.crop crops to detector boxes but 'crop' names no run")
    return Ensemble(file.path, members, auxiliary, gate, crop, params, record)


def write_ensemble_file(path: str | Path, members: list[EnsembleMember], auxiliary: list[AuxiliaryRun],
                        gate: AuxiliaryRun | None, crop: AuxiliaryRun | None,
                        params: EnsembleParams | ImageEnsembleParams, dims: str | None = None, **extra) -> dict:
    """Write the ensemble file (atomically, versioned); returns the record written. `dims`: "2d" for a
    2D ensemble (first, after the version), none for the GI's. `extra`: scores, oof, search and other
    JSON-ready sections."""
    unique = list({a.path: a for a in auxiliary}.values())
    record = {**({"dims": dims} if dims else {}),
              "runs": [m.to_dict() for m in members], "auxiliary": [a.to_dict() for a in unique],
              "gate": gate.path if gate else None, "crop": crop.path if crop else None,
              "params": params.to_dict(), **extra}
    write_ensemble(path, record)
    return {"version": ENSEMBLE_VERSION, **record}

"""How a run's predictions are made: `PredictSettings`, one value shared by the predict options,
the prediction manifest (pred_<split>/predict.json) and each member of an ensemble file, so test
time repeats exactly what the out-of-fold predictions did."""
from __future__ import annotations

import math
from dataclasses import dataclass

from src.core.errors import DataError
from src.inference.gating import parse_gate_rule
from src.inference.tta import parse_tta

FIELDS = ("tta", "crop", "gate", "gate_threshold", "gate_rule")


def read_tta(value, where: str) -> tuple[str, ...]:
    """A TTA list read from a file (`where` names the file and key): distinct flip names; null is none."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not all(isinstance(t, str) for t in value):
        raise DataError(f"{where}: expected a list of flip names, got {value!r}")
    try:
        return parse_tta(tuple(value))
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class PredictSettings:
    """TTA flips; the detector run whose boxes crop the input; the classifier run whose presence
    gates slices at `gate_threshold`, and/or the pixel-count rule `gate_rule` ("PIXELS:PROB")."""

    tta: tuple[str, ...] = ()
    crop: str | None = None
    gate: str | None = None
    gate_threshold: float | None = None  # with a gate run only (default 0.5)
    gate_rule: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "tta", parse_tta(self.tta))
        for name in ("crop", "gate", "gate_rule"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise DataError(f"--{name.replace('_', '-')} {value!r}: expected a non-empty text")
        threshold = self.gate_threshold
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                      or not math.isfinite(threshold) or not 0 <= threshold < 1):
            raise DataError(f"--gate-threshold {threshold!r}: expected a probability in [0, 1)")
        # the threshold belongs to the gate run: none without one, 0.5 unless given
        object.__setattr__(self, "gate_threshold", None if self.gate is None else float(
            0.5 if threshold is None else threshold))
        if self.gate_rule is not None:
            parse_gate_rule(self.gate_rule)

    @property
    def gates(self) -> bool:
        """Whether slices are gated (by a classifier run, the pixel rule, or both)."""
        return self.gate is not None or self.gate_rule is not None

    @property
    def rule(self) -> tuple[int, float] | None:
        return parse_gate_rule(self.gate_rule) if self.gate_rule else None

    def runs(self) -> list[str]:
        """The other runs these settings read: the gate run, then the crop run."""
        return [p for p in (self.gate, self.crop) if p is not None]

    def to_dict(self) -> dict:
        return {"tta": list(self.tta), "crop": self.crop, "gate": self.gate,
                "gate_threshold": self.gate_threshold, "gate_rule": self.gate_rule}

    @classmethod
    def from_dict(cls, value, source: str) -> PredictSettings:
        """Settings read from a file (`source` names it and the key): an object with only known keys."""
        if not isinstance(value, dict):
            raise DataError(f"{source}: expected an object with {', '.join(FIELDS)}")
        unknown = sorted(set(value) - set(FIELDS))
        if unknown:
            raise DataError(f"{source}: unknown key(s) {', '.join(unknown)} (known: {', '.join(FIELDS)})")
        tta = read_tta(value.get("tta"), f"{source}.tta")
        try:
            return cls(**{**{k: value.get(k) for k in FIELDS}, "tta": tta})
        except DataError as exc:
            raise DataError(f"{source}: {exc}") from None

"""The eligibility rule language of the offer catalogue: (field, op, value) over named
profile fields, checked against the profile_v2 FeatureService (the profile the decision service
reads: profile_v1 plus customer value, e.g. ``value_tier``, ``clv_12m``) when a rule is built,
so a rule names only fields a decision will see. No expressions are evaluated.

Split from :mod:`offers.catalog`, which reads the YAML file these rules sit in.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, model_validator

# Rules test the features of the profile_v2 FeatureService, plus the derived fields below.
DAYS_PER_MONTH = 30.4375
# Fields the catalogue speaks in (months) computed from a feature (days): name -> (feature,
# divisor). ``serving.policy.profile_fields`` adds them to a profile before rules run.
DERIVED_FIELDS: dict[str, tuple[str, float]] = {
    "tenure_months": ("tenure_days", DAYS_PER_MONTH),
    "months_left": ("months_left_on_contract", 1.0),  # missing (None/NaN) for prepaid
}
KINDS = ("text", "number", "boolean")  # what a rule can compare
Op = Literal["==", "!=", "<", "<=", ">", ">=", "in", "not_in"]
COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
Scalar = str | float | int | bool
_KNOWN = frozenset((str, int, bool))  # never "unknown" (see ``Rule.matches``)


@functools.cache
def rule_fields() -> dict[str, str]:
    """Every profile field name -> its kind (text, number, boolean, or the Feast type a rule
    cannot compare), read from the FeatureService definition so a rule can only name a field
    the decision will see. Derived fields count when their feature is in the service."""
    from feast.types import Bool, Float32, Float64, Int32, Int64, String

    from features.repo.feature_services import profile_v2

    kinds = {String: "text", Bool: "boolean", Float32: "number", Float64: "number"}
    kinds |= {Int32: "number", Int64: "number"}
    fields = {
        f.name: kinds.get(f.dtype, str(f.dtype))
        for projection in profile_v2.feature_view_projections
        for f in projection.features
    }
    for name, (source, _) in DERIVED_FIELDS.items():
        if fields.get(source) == "number":
            fields[name] = "number"
    return fields


class Rule(BaseModel):
    """One eligibility condition: ``profile[field] <op> value``; a missing field never matches."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    field: str
    op: Op
    value: Scalar | list[Scalar]

    @model_validator(mode="after")
    def _check(self) -> Rule:
        fields = rule_fields()
        kind = fields.get(self.field)
        if kind is None:
            known = ", ".join(f for f, k in fields.items() if k in KINDS)
            raise ValueError(f"unknown profile field {self.field!r} (known: {known})")
        if kind not in KINDS:
            raise ValueError(
                f"field {self.field!r} is a {kind} feature: rules compare text, numbers or booleans"
            )
        if self.op in ("in", "not_in"):
            if not isinstance(self.value, list) or not self.value:
                raise ValueError(f"op {self.op} needs a non-empty list value")
        elif isinstance(self.value, list):
            raise ValueError(f"op {self.op} needs a single value, not a list")
        elif self.op in ("<", "<=", ">", ">=") and kind != "number":
            raise ValueError(f"op {self.op} needs a numeric field, {self.field!r} is {kind}")
        values = self.value if isinstance(self.value, list) else [self.value]
        for v in values:
            if kind == "number" and (isinstance(v, bool) or not isinstance(v, int | float)):
                raise ValueError(f"field {self.field!r} is numeric, got {v!r}")
            if kind == "text" and not isinstance(v, str):
                raise ValueError(f"field {self.field!r} is text, got {v!r}")
            if kind == "boolean" and not isinstance(v, bool):
                raise ValueError(f"field {self.field!r} is boolean, got {v!r}")
        return self

    def matches(self, profile: Mapping[str, Any]) -> bool:
        """Whether one profile satisfies the rule (missing or null fields do not)."""
        x = profile.get(self.field)
        if type(x) is float:  # plain types first: np.ndim and pd.isna cost ~1 us a rule
            if x != x:
                return False  # NaN
        elif type(x) not in _KNOWN and (
            x is None or (np.ndim(x) == 0 and not isinstance(x, str) and pd.isna(x))
        ):
            return False  # None, NaN, NaT and pd.NA all mean "unknown"
        if self.op == "in":
            return x in self.value  # type: ignore[operator]
        if self.op == "not_in":
            return x not in self.value  # type: ignore[operator]
        return bool(COMPARE[self.op](x, self.value))

    def mask(self, frame: pd.DataFrame) -> np.ndarray:
        """Vectorised ``matches`` over the rows of a frame of profiles."""
        if self.field not in frame.columns:
            return np.zeros(len(frame), dtype=bool)
        col = frame[self.field]
        present = col.notna().to_numpy()
        if self.op == "in":
            hit = col.isin(self.value).to_numpy()
        elif self.op == "not_in":
            hit = ~col.isin(self.value).to_numpy()
        else:
            hit = np.asarray(COMPARE[self.op](col, self.value), dtype=bool)
        return present & hit

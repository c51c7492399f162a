"""constructor(cls) builds what cls.model_construct builds: the same fields, in the same
order, the same defaults and the same fields set."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel, Field

from record.tables import DecisionRow
from serving.construct import constructor
from serving.schemas import DecideResponse, RankedOffer

TS = datetime(2026, 6, 1, tzinfo=UTC)
ROW = {"decision_id": "d1", "ts": TS, "customer_id": "c1", "channel": "web",
       "experiment": "nbo", "arm": "treatment", "offer_id": "a", "propensity": 0.5}  # fmt: skip
CASES: list[tuple[type[BaseModel], dict[str, Any]]] = [
    (DecisionRow, ROW),  # defaults filled (context, scores, slots, ...)
    (DecisionRow, {**ROW, "probabilities": {"a": 0.5}, "nonsense": 1}),  # an extra is ignored
    (DecisionRow, DecisionRow(**ROW).model_dump()),  # every field given
    (
        DecideResponse,
        {
            "decision_id": "d1",
            "customer_id": None,
            "experiment": "nbo",
            "arm": "holdout",
            "offers": [],
            "model_versions": {},
            "fallback": False,
            "reasons": [],
        },
    ),  # fmt: skip
    (
        RankedOffer,
        {
            "offer_id": "a",
            "name": "A",
            "score": 0.1,
            "probability": 1.0,
            "position": 0,
            "creative": {},
            "reason": "chosen",
        },
    ),  # fmt: skip
]


def state(m: BaseModel) -> tuple[Any, ...]:
    return (type(m), list(m.__dict__.items()), m.model_fields_set, m.__pydantic_extra__,
            m.__pydantic_private__, m.model_dump_json())  # fmt: skip


@pytest.mark.parametrize(("cls", "values"), CASES)
def test_same_instance_as_model_construct(cls: type[BaseModel], values: dict[str, Any]) -> None:
    assert state(constructor(cls)(**values)) == state(cls.model_construct(**values))


def test_a_factory_default_is_fresh_each_time() -> None:
    make = constructor(DecisionRow)
    a, b = make(**ROW), make(**ROW)
    assert a.scores == {} and a.scores is not b.scores


def test_an_aliased_model_gets_model_construct() -> None:
    class Aliased(BaseModel):
        x: int = Field(alias="y")

    assert constructor(Aliased) == Aliased.model_construct
    assert constructor(Aliased)(y=1).x == 1

"""``Model.model_construct`` for the models a decision builds by the thousand (its ledger row,
its answer, its ranked offers), without pydantic's per-field alias bookkeeping: the same
instance (fields in declaration order, defaults filled, the same fields set), ~3x cheaper
(measured on 2,000 decisions: model_construct was ~12% of plan_many's time in cProfile)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


def constructor(cls: type[M]) -> Callable[..., M]:
    """A function that builds ``cls`` as ``cls.model_construct(**values)`` would, from
    trusted values. A model with aliases, a post-init, extra fields allowed or a root
    gets ``model_construct`` itself: the shortcut would not be the same there."""
    fields = cls.__pydantic_fields__
    if (
        cls.__pydantic_root_model__
        or cls.__pydantic_post_init__
        or cls.model_config.get("extra") == "allow"
        or any(f.alias is not None or f.validation_alias is not None for f in fields.values())
    ):
        return cls.model_construct
    names = tuple(fields)
    known = frozenset(names)
    optional = {n: f for n, f in fields.items() if not f.is_required()}
    new, put = cls.__new__, object.__setattr__

    def make(**values: Any) -> M:
        given = known.intersection(values)
        if len(given) == len(names):
            state = {n: values[n] for n in names}
        else:
            state = {}
            for n in names:
                if n in values:
                    state[n] = values[n]
                elif n in optional:
                    f = optional[n]
                    state[n] = f.get_default(call_default_factory=True, validated_data=state)
        m = new(cls)
        put(m, "__dict__", state)
        put(m, "__pydantic_fields_set__", set(given))
        put(m, "__pydantic_extra__", None)
        put(m, "__pydantic_private__", None)
        return m

    return make

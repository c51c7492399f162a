"""The one entity every view is keyed on: a resolved customer from the identity graph."""

from feast import Entity, ValueType

customer = Entity(
    name="customer",
    join_keys=["customer_id"],
    value_type=ValueType.STRING,
    description="a person as resolved by features.identity (stable across re-runs)",
)

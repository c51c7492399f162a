"""The online read path's pieces: what a FeatureService reads per feature view, and values
converted exactly as Feast's ``OnlineResponse.to_dict`` converts them.

``features.store.read_online`` reads each feature view through the provider's ``online_read``
and runs the on-demand views' own transforms with these, instead of ``get_online_features``
(measured here: ~0.2 ms against ~0.9-1.6 ms for one customer of ``profile_v1``; most of
Feast's cost was request planning and protobuf round trips, not the store).
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from feast import FeatureStore


class ReadPlan:
    """What one FeatureService reads: each feature view with the features to fetch (its own
    plus those its on-demand views take as inputs), the on-demand views, and value types."""

    def __init__(self, store: FeatureStore, fs: Any, names: list[str]) -> None:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey

        self.names = names
        self.types: dict[str, Any] = {}
        wanted: dict[str, list[str]] = {}
        self.odfvs: list[tuple[Any, tuple[str, ...]]] = []
        self.inputs: dict[str, list[str]] = {}
        self.aliases: dict[str, list[tuple[str, str]]] = {}
        for proj in fs.feature_view_projections:
            feats = [f.name for f in proj.features]
            try:
                odfv = store.get_on_demand_feature_view(proj.name)
            except Exception:  # noqa: BLE001 - not on-demand: a stored feature view
                odfv = None
            if odfv is None:
                wanted.setdefault(proj.name, [])
                wanted[proj.name] += [f for f in feats if f not in wanted[proj.name]]
                continue
            self.odfvs.append((odfv, tuple(feats)))
            self.inputs[odfv.name] = [*odfv.get_request_data_schema()]
            self.aliases[odfv.name] = []
            for src in odfv.source_feature_view_projections.values():
                got = wanted.setdefault(src.name, [])
                got += [f.name for f in src.features if f.name not in got]
                self.inputs[odfv.name] += [f.name for f in src.features]
                self.aliases[odfv.name] += [(f"{src.name}__{f.name}", f.name) for f in src.features]
        self.views: list[tuple[Any, tuple[str, ...]]] = []
        join_keys: set[str] = set()
        for view_name, feats in wanted.items():
            view = store.get_feature_view(view_name)
            self.views.append((view, tuple(feats)))
            join_keys.update(view.join_keys)
            self.types.update({f.name: f.dtype.to_value_type() for f in view.features})
        for odfv, _ in self.odfvs:
            self.types.update({f.name: f.dtype.to_value_type() for f in odfv.features})
        if len(join_keys) != 1:
            raise ValueError(f"feature service {fs.name}: expected one join key, got {join_keys}")
        self.join_key = join_keys.pop()
        self._key_proto = EntityKey
        for inputs in self.inputs.values():
            inputs.insert(0, self.join_key)
        self.request_fields = sorted(
            {n for odfv, _ in self.odfvs for n in odfv.get_request_data_schema()}
        )
        if set(self.request_fields) - {"request_ts"}:  # the only request data we can supply
            raise ValueError(f"feature service {fs.name}: request data {self.request_fields}")

    def transform(self, odfv: Any, values: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """The on-demand view's outputs from only its declared inputs (feast#6158), under both
        short and ``view__feature`` names as ``transform_dict`` gives them, without its
        per-call copying and name bookkeeping for the plain python mode."""
        inputs = {k: values[k] for k in self.inputs[odfv.name]}
        if odfv.mode != "python" or odfv.singleton:
            return odfv.transform_dict(inputs)
        for full, short in self.aliases[odfv.name]:
            inputs[full] = inputs[short]
        return odfv.feature_transformation.transform(inputs)

    def entity_keys(self, ids: list[str]) -> list[Any]:
        from feast.protos.feast.types.Value_pb2 import Value

        return [
            self._key_proto(join_keys=[self.join_key], entity_values=[Value(string_val=c)])
            for c in ids
        ]


_PLAIN = frozenset(("int64_val", "int32_val", "double_val", "float_val", "string_val", "bool_val"))
_UUIDS = frozenset(("UUID", "TIME_UUID"))


def to_python(value: Any, kind: Any) -> Any:
    """Feast's ``feast_value_type_to_python_type``, with scalar numbers, strings and flags
    (nearly every feature) read straight off the proto."""
    if value is None:
        return None
    attr = value.WhichOneof("val")
    if attr is None:
        return None
    if attr in _PLAIN and (attr != "string_val" or getattr(kind, "name", "") not in _UUIDS):
        return getattr(value, attr)
    from feast.type_map import feast_value_type_to_python_type

    return feast_value_type_to_python_type(value, kind)


def round_trip(column: list[Any], kind: Any) -> list[Any]:
    """On-demand outputs as Feast returns them: through its protobuf values and back. Floats
    and flags come back unchanged from that trip, so those columns skip it."""
    same = _IDENTITY.get(getattr(kind, "name", ""))
    if same and all(v is None or type(v) in same for v in column):
        return list(column)
    from feast.type_map import python_values_to_proto_values

    return [to_python(v, kind) for v in python_values_to_proto_values(list(column), kind)]


_IDENTITY: dict[str, tuple[type, ...]] = {"DOUBLE": (float,), "BOOL": (bool,)}


@functools.lru_cache(maxsize=4)
def request_ts(stamp: datetime) -> datetime:
    """Request data the way Feast hands it to a transform: whole seconds, UTC (cached: the
    stamp is floored to the second by the caller)."""
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    return to_python(python_values_to_proto_values([stamp], ValueType.UNKNOWN)[0], None)

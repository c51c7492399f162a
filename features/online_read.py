"""The online read path's pieces: what a FeatureService reads per feature view, and values
converted exactly as Feast's ``OnlineResponse.to_dict`` converts them.

``features.store.read_online`` reads the stored feature views (on SQLite, all of them in one
query of Feast's own tables; elsewhere through the provider's ``online_read``) and runs the
on-demand views' own transforms with these, instead of ``get_online_features`` (measured
here: ~0.2 ms through the provider against ~0.9-1.6 ms for one customer of ``profile_v1``;
most of Feast's cost was request planning and protobuf round trips, not the store).
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
        self._sqlite: SqliteViews | bool | None = None  # False: not a SQLite online store
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

    def stored(self, store: FeatureStore, ids: list[str]) -> dict[str, list[Any]]:
        """Each stored view's wanted features for ``ids`` (distinct), as columns."""
        if self._sqlite is None:
            self._sqlite = SqliteViews.for_plan(self, store) or False
        if self._sqlite:
            return self._sqlite.columns(ids)
        keys = self.entity_keys(ids)
        values: dict[str, list[Any]] = {}
        for view, wanted in self.views:
            rows = store.provider.online_read(store.config, view, keys, list(wanted))
            for name in wanted:
                kind = self.types[name]
                values[name] = [to_python(d.get(name) if d else None, kind) for _, d in rows]
        return values


def forget_customer(store: Any, customer_id: str) -> None:
    """Drop what the store's cached read plans remember of one customer (its entity key)."""
    for plan in getattr(store, "__dict__", {}).get("_nextbest_plans", {}).values():
        if getattr(plan, "_sqlite", None):
            plan._sqlite.forget(customer_id)


def entity_key_bytes(config: Any, join_key: str, customer_id: str) -> bytes:
    """A customer's entity key as Feast serialises it for the online stores (SQLite's
    ``entity_key`` column; Redis appends the project to it)."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    key = EntityKey(join_keys=[join_key], entity_values=[Value(string_val=customer_id)])
    return serialize_entity_key(key, config.entity_key_serialization_version)


class SqliteViews:
    """The stored views of a plan read from Feast's SQLite online store in one query (what
    the provider's ``online_read`` runs once per view, less its per-view cursor, timestamp
    parsing and ``ValueProto`` objects): ~30 us against ~100 us for the four views of
    ``profile_v1``. Every read queries the store, so a push is seen by the next read; only
    pure conversions are remembered: a customer's serialised entity key, and the Python value
    of a raw value of a type (most features repeat a few values: flags, counts, plans)."""

    CACHE_SIZE = 50_000  # entries per cache (a few MB); emptied when full: a miss costs ~1 us
    CHUNK = 999  # SQLite's smallest host-parameter limit, shared by the views' IN lists

    def __init__(self, plan: ReadPlan, store: FeatureStore, tables: list[str]) -> None:
        self.plan, self.online, self.config = plan, store.provider.online_store, store.config
        self.tables, self.chunk = tables, max(1, self.CHUNK // len(tables))
        self.names = [n for _, wanted in plan.views for n in wanted]
        self._sql: dict[int, str] = {}
        self._keys: dict[str, bytes] = {}
        by_kind: dict[Any, dict[bytes, Any]] = {}
        self._decoded = {n: by_kind.setdefault(plan.types[n], {}) for n in self.names}

    @classmethod
    def for_plan(cls, plan: ReadPlan, store: FeatureStore) -> SqliteViews | None:
        """The reader, or None when the online store is not Feast's SQLite one (or its
        private helpers moved), or two views share a feature name: the provider's
        ``online_read`` then reads."""
        try:
            from feast.infra.online_stores.sqlite import SqliteOnlineStore, _quote_id, _table_id
        except ImportError:
            return None
        online = getattr(store.provider, "online_store", None)
        if type(online) is not SqliteOnlineStore or not hasattr(online, "_get_conn"):
            return None
        names = [n for _, wanted in plan.views for n in wanted]
        if not names or len(set(names)) != len(names):
            return None
        registry = store.config.registry
        versioned = getattr(registry, "enable_online_feature_view_versioning", False)
        project = store.config.project
        tables = [_quote_id(_table_id(project, view, versioned)) for view, _ in plan.views]
        return cls(plan, store, tables)

    def key(self, customer_id: str) -> bytes:
        """The entity key as Feast stores it (:func:`entity_key_bytes`), once per customer."""
        got = self._keys.get(customer_id)
        if got is None:
            if len(self._keys) >= self.CACHE_SIZE:
                self._keys.clear()
            key = entity_key_bytes(self.config, self.plan.join_key, customer_id)
            got = self._keys[customer_id] = key
        return got

    def forget(self, customer_id: str) -> None:
        """Drop a customer's remembered entity key (the right to erasure reaches memory)."""
        self._keys.pop(customer_id, None)

    def columns(self, ids: list[str]) -> dict[str, list[Any]]:
        """The wanted features of ``ids`` (distinct) as columns, None where not stored; each
        stored value put straight into its column (no row dict per customer)."""
        keys = [self.key(c) for c in ids]
        conn, decoded = self.online._get_conn(self.config), self._decoded
        out: dict[str, list[Any]] = {name: [None] * len(keys) for name in self.names}
        at_of = {k: i for i, k in enumerate(keys)}
        for at in range(0, len(keys), self.chunk):
            part = keys[at : at + self.chunk]
            rows = conn.execute(self._select(len(part)), part * len(self.tables)).fetchall()
            if len(part) == 1:  # one customer (most reads): no key column
                rows = [(part[0], name, raw) for name, raw in rows]
            for key, name, raw in rows:
                cache = decoded.get(name)
                if cache is None:  # a stored feature the service does not read
                    continue
                value = cache.get(raw, _MISSING)
                if value is _MISSING:
                    value = self.decode(name, raw)
                out[name][at_of[key]] = value
        return out

    def decode(self, name: str, raw: bytes | None) -> Any:
        """``to_python`` of the stored ``ValueProto`` bytes; immutable results remembered."""
        from feast.protos.feast.types.Value_pb2 import Value

        proto = None
        if raw is not None:
            proto = Value()
            proto.ParseFromString(raw)
        value = to_python(proto, self.plan.types[name])
        cache = self._decoded[name]
        if raw is not None and type(value) in _IMMUTABLE:
            if len(cache) >= self.CACHE_SIZE:
                cache.clear()
            cache[raw] = value
        return value

    def _select(self, n: int) -> str:
        sql = self._sql.get(n)
        if sql is None:
            key = "" if n == 1 else "entity_key, "
            where = "= ?" if n == 1 else f"IN ({','.join('?' * n)})"
            sql = self._sql[n] = " UNION ALL ".join(
                f"SELECT {key}feature_name, value FROM {t} WHERE entity_key {where}"
                for t in self.tables
            )
        return sql


_MISSING = object()
_IMMUTABLE = frozenset((bool, int, float, str, bytes, datetime, type(None)))
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

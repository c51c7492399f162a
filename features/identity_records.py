"""Identity records in: the input contract of ``resolve`` and its row/column error messages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from features import normalize as nz
from features.schema import IDENTITY_INPUT_COLUMNS

KEY_FIELDS = ("login_id", "loyalty_id", "cookie_id", "email", "phone")


class IdentityInputError(ValueError):
    """A record the resolver cannot use; the message names the row and the column."""

    def __init__(self, row: int | None, record_id: str | None, column: str, reason: str) -> None:
        where = f"row {row} (record_id {record_id}), " if row is not None else ""
        super().__init__(f"{where}column {column}: {reason}")
        self.row, self.record_id, self.column = row, record_id, column


@dataclass
class Record:
    """One validated input row: canonical identifiers and canonical names (still plain text)."""

    record_id: str
    keys: dict[str, str]  # field -> canonical value
    first: str | None
    last: str | None


def prepare(
    df: pd.DataFrame,
    region: str,
    warnings: list[str] | None = None,
    unusable: dict[str, int] | None = None,
) -> list[Record]:
    """Validate and normalise every row; the first unusable row raises ``IdentityInputError``.

    Rows are numbered from 1 (the first data row, not counting a CSV header). By default a value
    that is present but unparsable is an error, not silently dropped: an ignored typo'd phone
    would quietly lose a link, and the caller is best placed to fix the source. With a
    ``warnings`` list (lenient mode) such values are dropped and described there instead, and a
    row left without identifiers becomes a customer of its own; ``unusable`` counts the
    dropped values per column.
    """
    missing = [c for c in IDENTITY_INPUT_COLUMNS if c not in df.columns]
    if missing:
        raise IdentityInputError(None, None, ", ".join(missing), "missing from the input")
    parsers: dict[str, Callable[[object], str | None]] = {
        "email": nz.normalize_email,
        "phone": lambda v: None if nz.blank(v) else nz.normalize_phone(str(v).strip(), region),
        "loyalty_id": nz.loyalty_key,
        "login_id": nz.login_key,
        "cookie_id": nz.cookie_key,
        "first_name": nz.normalize_name,
        "last_name": nz.normalize_name,
    }
    seen: dict[str, int] = {}
    out: list[Record] = []
    rows = df[list(IDENTITY_INPUT_COLUMNS)].astype(object).itertuples(index=False, name=None)
    for row_no, values in enumerate(rows, start=1):
        raw = dict(zip(IDENTITY_INPUT_COLUMNS, values, strict=True))
        rid = None if nz.blank(raw["record_id"]) else str(raw["record_id"]).strip()
        if rid is None:
            raise IdentityInputError(row_no, None, "record_id", "is empty")
        if rid in seen:
            raise IdentityInputError(row_no, rid, "record_id", f"duplicate of row {seen[rid]}")
        seen[rid] = row_no
        clean: dict[str, str] = {}
        for col, parse in parsers.items():
            try:
                value = parse(raw[col])
            except nz.NormalizeError as exc:
                error = IdentityInputError(row_no, rid, col, str(exc))
                if warnings is None:
                    raise error from exc
                warnings.append(f"{error} (ignored)")
                if unusable is not None:
                    unusable[col] = unusable.get(col, 0) + 1
                continue
            if value is not None:
                clean[col] = value
        keys = {f: clean[f] for f in KEY_FIELDS if f in clean}
        if not keys:
            error = IdentityInputError(row_no, rid, "/".join(KEY_FIELDS), "no usable identifier")
            if warnings is None:
                raise error
            warnings.append(f"{error} (kept as a customer of its own)")
        out.append(Record(rid, keys, clean.get("first_name"), clean.get("last_name")))
    return out

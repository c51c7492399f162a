"""Read any experiment export (CSV) into the clean frame ``uplift.analyze`` expects.

Exports come from other tools: arm labels with stray spaces, outcomes written 0/1, Yes/No,
True/False or as amounts. Anything we cannot read is refused with the column, the reason and
the line of the file, because a silently dropped row would bias the lift.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from estimation.uplift import UpliftError, UpliftResult, analyze

_WORDS = {"yes": 1.0, "no": 0.0, "true": 1.0, "false": 0.0, "y": 1.0, "n": 0.0}
_CONTROL_NAMES = ("control", "holdout", "no e-mail", "no email", "0", "false", "no")


def parse_numeric(raw: pd.Series, column: str) -> pd.Series:
    """0/1, Yes/No, True/False or numbers -> floats; the first bad value is named with its line."""
    text = raw.astype("string").str.strip()
    words = text.str.lower().map(_WORDS)
    numbers = pd.to_numeric(text.where(words.isna()), errors="coerce")
    values = words.fillna(numbers)
    bad = values.isna()
    if bad.any():
        pos = int(bad.to_numpy().argmax())
        value = raw.iloc[pos]
        reason = "an empty value" if pd.isna(value) or not str(value).strip() else (
            f"a non-numeric value {str(value)!r}"
        )  # fmt: skip
        # line 1 is the header, so data row i (0-based) is on line i + 2
        raise UpliftError(f"column {column!r} has {reason} at line {pos + 2} (row {pos + 1})")
    return values.astype(float)


def clean_arms(raw: pd.Series, column: str) -> pd.Series:
    """Arm labels as stripped strings; 1.0/0.0 written by spreadsheets become '1'/'0'."""
    if raw.isna().any():
        pos = int(raw.isna().to_numpy().argmax())
        raise UpliftError(f"column {column!r} has an empty arm label at line {pos + 2}")
    labels = raw.astype(str).str.strip()
    as_number = pd.to_numeric(labels, errors="coerce")
    if as_number.notna().all() and (as_number == as_number.round()).all():
        labels = as_number.astype(int).astype(str)
    if (labels == "").any():
        pos = int((labels == "").to_numpy().argmax())
        raise UpliftError(f"column {column!r} has an empty arm label at line {pos + 2}")
    return labels


def guess_control(labels: list[str], column: str) -> str:
    """The label that reads as 'no treatment' when the user did not name one."""
    for name in _CONTROL_NAMES:
        for label in labels:
            if label.lower() == name:
                return label
    raise UpliftError(
        f"column {column!r}: no --control given and none of the labels {labels} reads as a "
        "control (control, holdout, 0, No ...); name it with --control"
    )


def read_export(path: Path, arm: str, outcome: str, covariate: str | None = None) -> pd.DataFrame:
    """The export as columns ``arm`` (str), ``outcome`` and ``covariate`` (float)."""
    if not Path(path).exists():
        raise UpliftError(f"--csv {path}: no such file")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UpliftError(f"--csv {path}: not a readable CSV file ({exc})") from exc
    raw.columns = [str(c).strip() for c in raw.columns]
    wanted = [c for c in (arm, outcome, covariate) if c]
    for col in wanted:
        if col not in raw.columns:
            raise UpliftError(f"column {col!r} is missing; columns found: {list(raw.columns)}")
    if raw.empty:
        raise UpliftError(f"--csv {path}: the file has a header but no rows")
    frame = pd.DataFrame({arm: clean_arms(raw[arm], arm)})
    frame[outcome] = parse_numeric(raw[outcome], outcome)
    if covariate:
        frame[covariate] = parse_numeric(raw[covariate], covariate)
    return frame


def analyze_export(
    path: Path,
    arm: str,
    outcome: str,
    control: str | None = None,
    covariate: str | None = None,
    alpha: float = 0.05,
) -> UpliftResult:
    """What ``nextbest uplift analyze`` runs: read, pick the control, analyse every arm."""
    frame = read_export(path, arm, outcome, covariate)
    labels = sorted(frame[arm].unique().tolist())
    if control is None:
        control = guess_control(labels, arm)
    control = control.strip()
    return analyze(frame, arm, outcome, control, covariate, alpha)

"""Splink (Fellegi-Sunter, DuckDB backend) on the same records as our batch engine.

Same blocking keys as ours (each identifier on its own), our canonical e-mails, phones and
names (``features.identity_chunks``), and a model trained on the data itself: u by random
sampling, m by expectation maximisation on two blocking rules, so each comparison is trained
at least once. Records sharing a login or a loyalty card are a near-certain match either way.
"""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb
import pandas as pd

from features.identity_batch import read_chunks
from features.identity_chunks import normalise_chunk
from features.identity_records import KEY_FIELDS

DEFAULT_THRESHOLD = 0.9  # a usual match probability for clustering
# the sweep: the best of these (chosen against truth, which flatters Splink) is reported too
THRESHOLDS = (0.05, 0.2, 0.5, DEFAULT_THRESHOLD, 0.99, 0.999, 0.9999)
# EM sessions: each trains every comparison but its own, so together they train all of them
EM_RULES = (("phone",), ("email",), ("login_id",), ("first_name", "last_name"))


def canonical_records(csv: Path, region: str) -> pd.DataFrame:
    """Our canonical form of every record, with ``unique_id`` as Splink wants it."""
    frames = [normalise_chunk(chunk, region)[0] for chunk in read_chunks(csv, 200_000)]
    frame = pd.concat(frames, ignore_index=True)
    frame.insert(0, "unique_id", range(len(frame)))
    return frame


def settings(present: set[str]) -> object:
    """Comparisons on every identifier the data holds (term frequencies on shared e-mails and
    phones) and Jaro-Winkler levels on both names; predictions blocked on each identifier."""
    import splink.comparison_library as cl
    from splink import SettingsCreator, block_on

    keys = [f for f in KEY_FIELDS if f in present]
    shared = ("email", "phone")
    return SettingsCreator(
        link_type="dedupe_only",
        comparisons=[
            *(cl.ExactMatch(f).configure(term_frequency_adjustments=f in shared) for f in keys),
            cl.NameComparison("first_name"),
            cl.NameComparison("last_name"),
        ],
        blocking_rules_to_generate_predictions=[block_on(f) for f in keys],
        retain_intermediate_calculation_columns=False,
        retain_matching_columns=False,
    )


def resolve(
    csv: Path, region: str, workdir: Path, thresholds: tuple[float, ...], threads: int = 2
) -> dict[float, pd.DataFrame]:
    """record_id -> cluster at each match-probability threshold, from one model trained and
    one prediction made by Splink on DuckDB (spilling to ``workdir``)."""
    from splink import DuckDBAPI, Linker, block_on
    from splink.internals.exceptions import EMTrainingException

    records = canonical_records(csv, region)
    present = {c for c in KEY_FIELDS if records[c].notna().any()}
    con = duckdb.connect(str(workdir / "splink.duckdb"))
    con.execute(f"SET threads = {threads}")
    con.execute(f"SET temp_directory = '{workdir / 'spill'}'")
    linker = Linker(
        DuckDBAPI(con).register(records, table_name="records"), settings(present), log_level=None
    )
    logging.getLogger("splink").setLevel(logging.ERROR)
    training = linker.training
    strong = [c for c in ("login_id", "loyalty_id") if c in present]
    deterministic = [*(block_on(c) for c in strong), block_on("email", "last_name")]
    training.estimate_probability_two_random_records_match(deterministic, recall=0.8)
    training.estimate_u_using_random_sampling(max_pairs=1e7, seed=0)
    for rule in EM_RULES:
        if set(rule) <= present | {"first_name", "last_name"}:
            try:
                training.estimate_parameters_using_expectation_maximisation(block_on(*rule))
            except EMTrainingException:  # the rule makes no pairs in this data
                continue
    predictions = linker.inference.predict(threshold_match_probability=min(thresholds))
    out = {}
    for threshold in thresholds:
        clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(
            predictions, threshold_match_probability=threshold
        ).as_pandas_dataframe()
        by_id = clusters.set_index("unique_id")["cluster_id"]
        out[threshold] = pd.DataFrame(
            {"record_id": records["record_id"], "customer_id": records["unique_id"].map(by_id)}
        )
    con.close()
    return out

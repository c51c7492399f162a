"""Offline sources over the snapshot Parquet files, and the push source of the real-time path.

Paths are relative on purpose: ``features.store`` sets ``repo_path`` to ``settings.feature_dir``,
so ``NEXTBEST_HOME`` (not the current directory) decides where they are read from.
"""

from feast import Field, FileSource, PushSource, RequestSource
from feast.types import UnixTimestamp

SNAPSHOT_PATH = "snapshots/customer_features.parquet"
REALTIME_PATH = "snapshots/customer_realtime.parquet"
SEGMENTS_PATH = "snapshots/customer_segments.parquet"
VALUE_PATH = "snapshots/customer_value.parquet"

customer_snapshots = FileSource(
    name="customer_snapshots",
    path=SNAPSHOT_PATH,
    timestamp_field="event_timestamp",
    description="weekly point-in-time aggregates written by features.build",
)

customer_realtime_batch = FileSource(
    name="customer_realtime_batch",
    path=REALTIME_PATH,
    timestamp_field="event_timestamp",
    description="basket and last-visit state at each snapshot (offline side of the push source)",
)

customer_segments_source = FileSource(
    name="customer_segments_source",
    path=SEGMENTS_PATH,
    timestamp_field="event_timestamp",
    description="RFM segment, behavioural cluster and preferred channel (features.segments)",
)

customer_value_snapshots = FileSource(
    name="customer_value_snapshots",
    path=VALUE_PATH,
    timestamp_field="event_timestamp",
    description="customer lifetime value as of each `nextbest clv train` (training.clv_world)",
)

customer_realtime_push = PushSource(
    name="customer_realtime_push",
    batch_source=customer_realtime_batch,
    description="features.ingest pushes basket and last-visit fields here per event",
)

decision_time = RequestSource(
    name="decision_time",
    schema=[Field(name="request_ts", dtype=UnixTimestamp)],
    description="when the features are asked for: now online, the row's time in training",
)

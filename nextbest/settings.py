"""One typed settings object for the whole project (env prefix ``NEXTBEST_``)."""

from __future__ import annotations

import ipaddress
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Nothing we start may phone home; set before bentoml/mlflow are imported anywhere.
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("FEAST_USAGE", "False")


EXPERIMENT_NAME = r"^[A-Za-z0-9_.:-]{1,64}$"  # as context.campaign accepts them
RESERVED_EXPERIMENTS = ("global",)  # the global holdout's records in the assignments table
BanditReward = Literal["spend", "conversion"]  # what a decision earned, for the bandit
CONSOLE_ROLES = ("agent", "clerk", "marketer", "admin")  # who may see which console pages


class Settings(BaseSettings):
    """Every knob of Nextbest. Paths default to folders under ``home``."""

    model_config = SettingsConfigDict(env_prefix="NEXTBEST_", extra="ignore")

    home: Path = Field(Path(".nextbest"), description="root of every file Nextbest writes")
    seed: int = 7
    customers: int = Field(2000, gt=0, description="simulated customers for demo/simulate")
    days: int = Field(90, gt=0, description="simulated days of history")
    region: str = Field("GB", description="default country for national phone numbers")
    uplift_learner: Literal["staged", "s", "t"] = Field(
        "staged",
        description="the uplift model `nextbest train propensity` promotes (all three are "
        "measured on every run; the uplift league in docs/benchmarks.md compares them)",
    )

    ledger_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in home")
    mlflow_tracking_uri: str | None = Field(None, description="default sqlite:///home/mlflow.db")
    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_url: str = "127.0.0.1:6379"
    # a hung or dead online store must cost a decision a fast fallback, never a stall
    feature_timeout_ms: int = Field(
        100,
        gt=0,
        description="online feature store: Redis connect and read timeout, and the longest a "
        "decision waits for its features before it falls back",
    )
    feature_breaker_failures: int = Field(
        3, gt=0, description="failed feature reads in a row that open the circuit (fallback)"
    )
    feature_breaker_reset_seconds: float = Field(
        1.0, gt=0, description="seconds the feature circuit stays open before one probe read"
    )

    host: str = "127.0.0.1"
    port: int = 3000
    workers: int = 1

    identity_salt: str = Field("nextbest-dev-salt", description="secret salt for hashed ids")
    identity_max_cluster: int = Field(60, gt=1, description="most records one customer may have")
    identity_max_names: int = Field(2, gt=0, description="most distinct first names per customer")
    identity_link_by_name: bool = Field(
        False, description="also join key-less pieces on a rare full name (riskier, off)"
    )
    identity_batch_engine: Literal["duckdb", "spark"] = Field(
        "duckdb", description="engine of batch identity resolution (spark: pyspark, Java 17)"
    )
    identity_batch_memory: str = Field(
        "1GB",
        pattern=r"^\d+(\.\d+)?\s*[KMGT]i?B$",
        description="DuckDB memory limit of a batch run",
    )
    assignment_salt: str = "nextbest-assignment"
    global_holdout_share: float = Field(
        0.05, ge=0, lt=1, description="people held out of every experiment"
    )
    experiment_holdout_share: float = Field(
        0.10,
        ge=0,
        lt=1,
        description="each experiment's own holdout among the rest: an experiment holds out "
        "1 - (1 - global)(1 - this) of people (14.5% with the defaults)",
    )
    attribution_days: int = Field(30, gt=0)
    abandon_after_minutes: int = Field(60, gt=0)
    epsilon: float = Field(0.05, ge=0, le=1, description="exploration floor")
    bandit_exploration: Literal["epsilon", "squarecb"] = Field(
        "squarecb", description="VW exploration of the bandit (epsilon uses `epsilon`)"
    )
    bandit_reward: BanditReward = Field(
        "spend",
        description="what a decision earned (each order once, to the decision it names or the "
        "person's last delivered decision before it, within attribution_days): spend = the "
        "value of those orders minus the offer's cost per converted order (unbiased for "
        "incremental value); conversion = only the converted orders' value minus cost (less "
        "noisy, but it credits the offer for people who would have bought anyway); the report's "
        "off-policy estimates use the same reward",
    )
    outcome_future_minutes: float = Field(
        5.0,
        ge=0,
        description="an outcome or event time may be at most this far ahead of the service's "
        "clock (clock skew); a later one is refused (400 naming ts): it would count as the "
        "customer's last response for ever and turn suppression off",
    )
    outcome_grace_days: float = Field(
        7.0,
        ge=0,
        description="an outcome or event time may be at most attribution_days plus this old; an "
        "older one is refused (400 naming ts): no decision could count it (send history in "
        "bulk to the event log instead)",
    )
    # issue 15 item 3: one absurd amount (1e300) would dominate every mean the reports and the
    # bandit take; a larger one is refused at the door and skipped (and counted) by the report
    max_money_value: float = Field(
        1_000_000.0,
        gt=0,
        allow_inf_nan=False,
        description="the largest money value an outcome or a purchase event may carry (400 "
        "naming value above it); the report skips and counts ledger rows above it",
    )
    experiment: str = Field("nbo", description="experiment of decisions without a campaign")
    experiments: list[str] = Field(
        [],
        description="experiments a channel may name in context.campaign (besides `experiment`); "
        "any other name is refused, since each name draws its own holdout",
    )
    contact_caps: dict[str, int] = Field(
        {"email": 2, "sms": 2}, description="outbound contacts per channel per cap window"
    )
    cap_window_days: int = Field(7, gt=0)
    churn_lever: float = Field(
        1.0, ge=0, description="extra weight of retention offers x churn risk"
    )
    retention_offers: list[str] = Field(["retention_discount"], description="churn lever applies")
    abandon_scan_seconds: float = Field(30.0, gt=0, description="how often serve scans baskets")
    journeys_dir: Path | None = Field(
        None, description="the active journey files (*.yaml); default the home's journeys/"
    )
    journey_runner: bool = Field(
        True, description="`nextbest serve` runs due journey steps beside the service"
    )
    journey_poll_seconds: float = Field(
        1.0, gt=0, description="how often a journey runner looks for due steps when idle"
    )
    journey_schedule_minutes: float = Field(
        60.0,
        gt=0,
        description="how often a journey runner sweeps scheduled entry triggers (lifecycle, "
        "calendar, predictive, behavioural)",
    )
    bandit_reward_wait_minutes: float = Field(
        60.0 * 24,
        ge=0,
        description="the served bandit learns a decision once it is this old, from the outcomes "
        "that arrived within it (capped by attribution_days)",
    )
    bandit_learn_every_seconds: float = Field(
        30.0,
        gt=0,
        description="how often the learner process adopts a newly promoted bandit and learns "
        "the decisions that matured",
    )
    learner_publish_seconds: float = Field(
        5.0,
        gt=0,
        description="the learner process publishes its policy to the workers this long after "
        "the last publish, when it learned something since",
    )
    learner_publish_updates: int = Field(
        500,
        gt=0,
        description="the learner process publishes at once when this many updates are waiting",
    )
    learner_stale_seconds: float = Field(
        10.0,
        gt=0,
        description="/healthz reports the learner degraded when its heartbeat is older",
    )
    bandit_cold_start_share: float = Field(
        0.05,
        gt=0,
        le=0.5,
        description="probability of each offer the bandit has not learned yet (new to the "
        "catalogue since it was trained) wherever it is allowed, at most an even share; the "
        "bandit ranks the offers it knows in the rest",
    )
    bandit_cold_start_examples: int = Field(
        100,
        gt=0,
        description="a new offer leaves cold start once the bandit learned it this many times "
        "as the shown offer (online or in a retrain)",
    )
    bandit_promotion_margin: float = Field(
        0.0,
        ge=0,
        description="a retrained bandit replaces the champion only when the lower 95% bound of "
        "its advantage (SNIPS, paired on the same recent logs) exceeds this, in reward units "
        "per decision",
    )
    model_promotion_margin: float = Field(
        0.0,
        ge=0,
        description="a churn or propensity challenger replaces the champion only when the lower "
        "95% bound of its advantage (AUC or Qini, paired bootstrap on the challenger's "
        "validation window) exceeds this",
    )
    request_timeout: int = Field(10, gt=0, description="BentoML request timeout, seconds")
    max_batch_decisions: int = Field(
        1000, gt=0, description="most decision requests one POST /decide/batch may carry"
    )
    max_body_bytes: int = Field(
        65_536,
        ge=1024,
        description="largest request body the service reads (a 413 past it, counted as it "
        "streams); a decision or an event is well under 4 KB",
    )
    # each worker caches holdout answers for 5 minutes (about 0.7 KB each)
    assignment_cache_size: int = Field(
        20_000, gt=0, description="most holdout assignments a worker keeps in memory"
    )
    # a report build reads the whole ledger, so a process of its own does it on this schedule
    # (and on an admin's POST /reports/refresh); /reports serves the last one
    report_every_minutes: float = Field(
        15.0,
        ge=0,
        description="how often serve rebuilds the report in the background; 0: only "
        "on an admin's POST /reports/refresh",
    )
    ledger_synchronous: Literal["FULL", "NORMAL"] = Field(
        "NORMAL",
        description="SQLite ledger: NORMAL (WAL) survives process crashes (SIGKILL: "
        "a commit is in the WAL file before it returns) without an fsync per commit; FULL also "
        "survives power loss, at 2.6-3.8 ms per commit",
    )
    channel_keys: list[str] = ["channel-dev-key"]
    admin_keys: list[str] = ["admin-dev-key"]
    # the console (issue 19): people sign in with a key of their own; "user:role:key", role
    # agent (call centre), clerk (store), marketer or admin (admin_keys sign in as admin too)
    console_keys: list[str] = [
        "agent:agent:agent-dev-key",
        "clerk:clerk:clerk-dev-key",
        "marketer:marketer:marketer-dev-key",
    ]
    console_secret: str = Field(
        "nextbest-console-dev-secret", description="signs the console's session cookies"
    )
    console_session_minutes: int = Field(
        480, gt=0, description="a console sign-in lasts this long (one shift)"
    )
    console_directory: Path | None = Field(
        None,
        description="the source records (CSV or Parquet: record_id, names, identifiers) the "
        "console shows names from; default the simulated world's identities.parquet",
    )
    mlflow_ui_url: str = Field(
        "http://127.0.0.1:5000", description="where `nextbest mlflow-ui` serves, for the console"
    )

    @field_validator("experiment", "experiments")
    @classmethod
    def _not_reserved(cls, v: str | list[str]) -> str | list[str]:
        for name in [v] if isinstance(v, str) else v:
            if name in RESERVED_EXPERIMENTS:
                raise ValueError(f"{name!r} is reserved for the global holdout")
            if not re.fullmatch(EXPERIMENT_NAME, name):
                raise ValueError(f"{name!r} must be 1-64 letters, digits or _.:-")
        return v

    @field_validator("console_keys")
    @classmethod
    def _console_keys(cls, v: list[str]) -> list[str]:
        for entry in v:
            user, role, key = (entry.split(":", 2) + ["", ""])[:3]
            if not user or not key or role not in CONSOLE_ROLES:
                raise ValueError(
                    f"each entry must be user:role:key with role one of "
                    f"{', '.join(CONSOLE_ROLES)}; got {user or '?'}:{role or '?'}:..."
                )
        return v

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @property
    def world_dir(self) -> Path:
        return self.home / "world"

    @property
    def event_log_dir(self) -> Path:
        return self.home / "events"

    @property
    def feature_dir(self) -> Path:
        return self.home / "features"

    @property
    def bentoml_home(self) -> Path:
        return self.home / "bentoml"

    @property
    def journeys_path(self) -> Path:
        """The folder of active journeys: ``journeys_dir``, else ``<home>/journeys``."""
        return self.journeys_dir or self.home / "journeys"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def ledger_db_url(self) -> str:
        return self.ledger_url or f"sqlite:///{self.home / 'ledger.db'}"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    def ensure_dirs(self) -> Settings:
        for d in (self.home, self.world_dir, self.event_log_dir, self.feature_dir):
            d.mkdir(parents=True, exist_ok=True)
        return self


# Defaults anyone can read here: fine on this machine, refused on an address others reach.
DEVELOPMENT_SECRETS = (
    "identity_salt",
    "assignment_salt",
    "channel_keys",
    "admin_keys",
    "console_keys",
    "console_secret",
)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or ``localhost``; a name is not resolved (0.0.0.0 and :: are every
    interface, so not loopback)."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def development_secrets_error(settings: Settings, host: str) -> str | None:
    """One line naming each salt or key list that still holds its public development value,
    when ``host`` is not loopback (a served salt or key everyone knows is no secret: anyone
    could predict holdout arms, reverse hashed ids or call the API); None when it may serve."""
    if is_loopback(host):
        return None
    parts = []
    for name in DEVELOPMENT_SECRETS:
        dev, value = Settings.model_fields[name].default, getattr(settings, name)
        known = next((k for k in dev if k in value), None) if isinstance(dev, list) else None
        if value == dev or known is not None:
            parts.append(
                f"NEXTBEST_{name.upper()}: the public development value cannot serve on "
                f"non-loopback host {host!r} (got {known or dev!r})"
            )
    return "settings: " + "; ".join(parts) if parts else None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests call ``get_settings.cache_clear()`` after changing env."""
    return Settings()

"""Holdout assignment by a salted hash of the customer id.

A hash (not a random draw, not a stored table) makes the arm sticky across channels, workers
and restarts for free, and the secret salt stops anyone predicting or gaming their arm.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel

Arm = Literal["treatment", "holdout"]
GLOBAL = "global"


def bucket(customer_id: str, experiment: str, salt: str) -> float:
    """A uniform number in [0, 1) fixed by (salt, experiment, customer)."""
    digest = hashlib.sha256(f"{salt}\x1f{experiment}\x1f{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign(customer_id: str, experiment: str, holdout_share: float, salt: str) -> Arm:
    """``holdout`` for a ``holdout_share`` slice of customers, independently per experiment."""
    if not 0.0 <= holdout_share < 1.0:
        raise ValueError(f"holdout_share must be in [0, 1), got {holdout_share}")
    if not customer_id:
        raise ValueError("customer_id must be a non-empty string")
    return "holdout" if bucket(customer_id, experiment, salt) < holdout_share else "treatment"


class Assignment(BaseModel):
    """The arm of one customer in one experiment, and which holdout put them there."""

    experiment: str
    arm: Arm
    holdout: Literal["global", "experiment"] | None = None


def assign_all(
    customer_id: str,
    experiment: str,
    *,
    global_share: float,
    experiment_share: float,
    salt: str,
) -> Assignment:
    """Global holdout first (kept out of every experiment), then the experiment's own."""
    if assign(customer_id, GLOBAL, global_share, salt) == "holdout":
        return Assignment(experiment=experiment, arm="holdout", holdout="global")
    if assign(customer_id, experiment, experiment_share, salt) == "holdout":
        return Assignment(experiment=experiment, arm="holdout", holdout="experiment")
    return Assignment(experiment=experiment, arm="treatment")

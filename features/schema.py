"""Column contracts of the simulated world's Parquet tables.

The simulator writes these; identity resolution, features, training and the replay driver read
them. Columns named ``true_*`` are ground truth: only evaluation code may look at them.
All timestamps are microsecond UTC (``timestamp[us, tz=UTC]``): DuckDB rejects nanoseconds.
"""

from __future__ import annotations

from typing import Literal

CHANNELS = ("web", "app", "email", "sms", "call_centre", "store", "paid_media")
Channel = Literal["web", "app", "email", "sms", "call_centre", "store", "paid_media"]

EVENT_TYPES = (
    "session_start",  # web/app visit (web: cookie_id, plus login_id when logged in)
    "product_view",
    "basket_add",
    "basket_remove",
    "checkout",
    "purchase",  # any channel; value = amount, product_id = what was bought
    "email_send",
    "email_open",
    "email_click",
    "sms_send",
    "sms_click",
    "call_contact",
    "complaint",
    "store_visit",
    "consent_change",  # consent_channel + consent_value
    "contract_renewal",
    "usage",  # monthly GB in value; channel "app", phone = the line; drops precede churn
    "churn",
)

# people.parquet: one row per real person (truth)
PEOPLE_COLUMNS = {
    "person_id": "string",
    "household_id": "string",
    "first_name": "string",
    "last_name": "string",
    "birth_year": "int",
    "plan": "string",  # prepaid | postpaid_s | postpaid_m | postpaid_l; today's (see plans)
    "arpu": "float",  # monthly revenue today (see plans for the history)
    "tenure_start": "timestamp",
    "contract_end": "timestamp|null",  # null for prepaid
    "has_app": "bool",
    # latent traits in [0, 1] unless said otherwise
    "price_sensitivity": "float",
    "tech_affinity": "float",
    "data_hunger": "float",
    "streaming_affinity": "float",
    "family_size": "int",
    "contact_aversion": "float",  # reacts badly to contact when high
    "loyalty": "float",
    "base_purchase_rate": "float",  # purchases per day with no contact
    "churn_base_hazard": "float",  # per day
    "churned_at": "timestamp|null",
    # lifecycle truth the churn hazard reads (added by the simulator, H1)
    "disengaged_at": "timestamp|null",  # usage dropped from here on; churn hazard jumps
    "renewed_at": "timestamp|null",  # contract renewed (contract_end is then the new end)
    "prior_contract_end": "timestamp|null",  # contract end before the renewal
}

# plans.parquet: the CRM's subscription history, one row per (person, change), by person and
# time; a row holds from valid_from until the person's next one. people.parquet's plan and arpu
# are the latest row (today's CRM extract): a past moment must read this table, never those.
PLAN_COLUMNS = {
    "person_id": "string",
    "valid_from": "timestamp",  # the first row of a person: sign-up (tenure_start)
    "plan": "string",
    "arpu": "float",
}

# identities.parquet: records as the source systems hold them (messy), with the truth
IDENTITY_SOURCES = ("crm", "eshop", "loyalty", "newsletter", "app", "web")
IDENTITY_COLUMNS = {
    "record_id": "string",
    "source": "string",  # one of IDENTITY_SOURCES
    "email": "string|null",
    "phone": "string|null",
    "first_name": "string|null",
    "last_name": "string|null",
    "loyalty_id": "string|null",
    "login_id": "string|null",
    "cookie_id": "string|null",
    "created_at": "timestamp",
    "true_person_id": "string",
}
# The identifiers a channel may know about a person (events, visits, decision requests).
ID_COLUMNS = ("email", "phone", "loyalty_id", "login_id", "cookie_id")
# The longest customer id: the ledger's and the journeys' columns hold it raw, and every API
# field that takes one refuses a longer id (a 400), so no write can fail on its length.
# The identifiers (ID_COLUMNS) may be longer (IDENTIFIER_MAX): they are stored only as salted
# hashes (``features.identity.salted_hash``, 32 characters).
CUSTOMER_ID_MAX = 64
IDENTIFIER_MAX = 256
# The CSV contract of `nextbest identity resolve`: the same minus source/created_at/truth.
IDENTITY_INPUT_COLUMNS = (
    "record_id",
    "email",
    "phone",
    "first_name",
    "last_name",
    "loyalty_id",
    "login_id",
    "cookie_id",
)

# events.parquet: every channel's events, carrying only the identifiers that channel knows
EVENT_COLUMNS = {
    "event_id": "string",
    "ts": "timestamp",
    "channel": "string",  # one of CHANNELS
    "event_type": "string",  # one of EVENT_TYPES
    "email": "string|null",
    "phone": "string|null",
    "loyalty_id": "string|null",
    "login_id": "string|null",
    "cookie_id": "string|null",
    "product_id": "string|null",  # an offer id from offers/offers.yaml, or a catalogue product
    "value": "float|null",  # money for purchases/basket adds, GB for usage
    "quantity": "int|null",
    "campaign_id": "string|null",
    "consent_channel": "string|null",
    "consent_value": "bool|null",
    "true_person_id": "string",
}

# exposures.parquet: past campaigns with a randomised holdout (treatment and holdout rows)
EXPOSURE_COLUMNS = {
    "exposure_id": "string",
    "ts": "timestamp",
    "campaign_id": "string",
    "offer_id": "string",
    "channel": "string",
    "arm": "string",  # treatment | holdout
    "email": "string|null",  # the identifier the campaign used
    "phone": "string|null",
    "login_id": "string|null",  # web/app exposures: who was on site (login when logged in)
    "cookie_id": "string|null",
    "open_basket": "bool",  # context: an abandoned basket in the 7 days before ts
    "true_person_id": "string",
    "true_p_treated": "float",  # conversion probability within the window if treated
    "true_p_untreated": "float",
    "converted": "bool",  # bought the offer's product within the attribution window
    "converted_at": "timestamp|null",
}

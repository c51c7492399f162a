"""One FeatureService per model version: training and serving both ask for these by name,
so nobody keeps a copy of a feature list."""

from feast import FeatureService

from features.repo.feature_views import (
    customer_activity,
    customer_basket_live,
    customer_consent,
    customer_profile,
    customer_realtime,
    customer_segments,
    customer_value,
)

churn_v1 = FeatureService(
    name="churn_v1",
    features=[customer_profile, customer_activity],
    description="churn model inputs: contract, tenure, usage trend, complaints, engagement",
)

offer_v1 = FeatureService(
    name="offer_v1",
    features=[
        customer_profile,
        customer_activity,
        customer_realtime[["basket_items", "basket_value", "last_channel"]],
        customer_basket_live,
    ],
    description="offer propensity/uplift inputs: the churn inputs plus the live basket",
)

PROFILE_V1_VIEWS = [
    customer_profile,
    customer_consent,
    customer_activity,
    customer_realtime,
    customer_basket_live,
    customer_segments,
]

profile_v1 = FeatureService(
    name="profile_v1",
    features=PROFILE_V1_VIEWS,
    description="the unified customer profile (nextbest profile, GET /profile)",
)

segments_v1 = FeatureService(
    name="segments_v1",
    features=[
        customer_profile[["arpu", "tenure_days"]],
        customer_activity[
            [
                "purchases_90d",
                "spend_90d",
                "visits_web_30d",
                "visits_app_30d",
                "visits_store_30d",
                "visits_call_centre_30d",
                "email_open_rate_90d",
                "complaints_90d",
                "usage_last_month",
                "usage_trend",
            ]
        ],
    ],
    description="behavioural clusters' inputs (features.segments), standardised there",
)

clv_v1 = FeatureService(
    name="clv_v1",
    features=[customer_profile, customer_activity],
    description="CLV tree model's profile inputs beside its RFM summary: plan, ARPU, tenure, "
    "visits by channel, engagement, as of each training cutoff",
)

profile_v2 = FeatureService(
    name="profile_v2",
    features=[*PROFILE_V1_VIEWS, customer_value],
    description="profile_v1 plus customer value (clv_12m, p_alive, value tier): what the "
    "decision service reads, so arbitration can weigh retention by what a customer is worth",
)

ALL_SERVICES = (churn_v1, offer_v1, profile_v1, profile_v2, clv_v1, segments_v1)

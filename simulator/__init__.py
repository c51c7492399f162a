"""The synthetic omnichannel world: Nextbest's ground truth and demo data.

Stages, one module each: ``people`` (traits, households) -> ``identities`` (messy records) ->
``lifecycle`` (complaints, disengagement, churn, renewals, usage) -> ``events`` (sessions,
baskets, purchases, calls, store visits) -> ``campaigns`` (+ ``consent``, ``conversions``) ->
``comebacks`` (abandoned baskets). ``response`` holds the causal formulas, ``truth`` the
importable truth API, ``visits`` live visits for replay, ``world`` the orchestration.
"""

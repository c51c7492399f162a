"""Marketing consent per channel over time: the initial record, changes of mind, opt-outs.

Campaigns ask ``Consent.ok`` before sending, and every change is also an event, so features
computed from the events see the same consent the simulator obeyed.
"""

from __future__ import annotations

import numpy as np

from simulator.buffer import EventBuffer
from simulator.clock import US_PER_DAY
from simulator.events import active_end, active_start
from simulator.identities import Keys
from simulator.people import Population

ORGANIC_FLIP = 0.04  # chance a person changes their mind once during the history
# Ad personalisation (paid media) consent, asked at sign-up of people with an e-mail: about
# half say yes, fewer among the contact-averse (issue 18: audiences export only those).
ADS_YES = 0.6


class Consent:
    """Consent state for e-mail and SMS; other channels need none."""

    def __init__(self, rng: np.random.Generator, pop: Population, keys: Keys) -> None:
        n = len(pop.people)
        averse = pop.people["contact_aversion"].to_numpy()
        self.keys = keys
        self.initial = {
            "email": (keys.email != None) & (rng.random(n) < 0.85 - 0.3 * averse),  # noqa: E711
            "sms": (keys.mobile != None) & (rng.random(n) < 0.7 - 0.4 * averse),  # noqa: E711
        }
        self.flip = {c: np.full(n, -1, dtype=np.int64) for c in self.initial}
        self.optout = {c: np.full(n, -1, dtype=np.int64) for c in self.initial}
        self.since = active_start(pop)

    def ok(self, channel: str, idx: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Whether each person may be contacted on ``channel`` at ``t``: nobody before they
        signed up (a new customer's consent is recorded then)."""
        joined = self.since[idx] <= t
        if channel not in self.initial:
            return joined
        flip, out = self.flip[channel][idx], self.optout[channel][idx]
        state = self.initial[channel][idx] ^ ((flip >= 0) & (flip <= t))
        return joined & state & ~((out >= 0) & (out <= t))

    def address(self, channel: str, idx: np.ndarray) -> dict[str, np.ndarray]:
        """The identifier a consent event of this channel carries."""
        if channel in ("email", "paid_media"):
            return {"email": self.keys.email[idx]}
        return {"phone": self.keys.mobile[idx]}

    def simulate_history(
        self, rng: np.random.Generator, pop: Population, days: int, buf: EventBuffer
    ) -> None:
        """The initial consent record (at tenure start) and the odd change of mind."""
        tenure = pop.people["tenure_start"].to_numpy()
        for ch, initial in self.initial.items():
            known = self.keys.email if ch == "email" else self.keys.mobile
            has = np.flatnonzero(known != None)  # noqa: E711
            buf.add(
                tenure[has],
                has,
                ch,
                "consent_change",
                consent_channel=ch,
                consent_value=initial[has].astype(np.int8),
                **self.address(ch, has),
            )
            flip = has[rng.random(len(has)) < ORGANIC_FLIP]
            # nobody changes their mind before joining or after leaving
            since = active_start(pop)[flip]
            span = active_end(pop, days)[flip] - since
            ft = since + (rng.random(len(flip)) * span).astype(np.int64)
            self.flip[ch][flip] = ft
            buf.add(
                ft,
                flip,
                ch,
                "consent_change",
                consent_channel=ch,
                consent_value=(~initial[flip]).astype(np.int8),
                **self.address(ch, flip),
            )
        self._ads_history(rng, pop, buf)

    def _ads_history(self, rng: np.random.Generator, pop: Population, buf: EventBuffer) -> None:
        """The ad personalisation choice recorded at sign-up, drawn from a child generator so
        every other draw of the world stays as it was before this consent existed. Campaigns
        never ask it (no simulated campaign runs on paid media); audiences' exports do."""
        child = rng.spawn(1)[0]
        averse = pop.people["contact_aversion"].to_numpy()
        has = np.flatnonzero(self.keys.email != None)  # noqa: E711
        yes = child.random(len(has)) < ADS_YES - 0.3 * averse[has]
        buf.add(
            pop.people["tenure_start"].to_numpy()[has],
            has,
            "paid_media",
            "consent_change",
            consent_channel="paid_media",
            consent_value=yes.astype(np.int8),
            **self.address("paid_media", has),
        )

    def opt_out(
        self,
        rng: np.random.Generator,
        channel: str,
        person: np.ndarray,
        ts: np.ndarray,
        averse: np.ndarray,
        buf: EventBuffer,
    ) -> None:
        """Some recipients unsubscribe after a send, the contact-averse far more often."""
        if channel not in self.initial:
            return
        out = (rng.random(len(person)) < 0.004 + 0.05 * averse**2) & (
            self.flip[channel][person] < 0
        )
        out_ts = ts[out] + (rng.random(int(out.sum())) * 2 * US_PER_DAY).astype(np.int64)
        self.optout[channel][person[out]] = out_ts
        buf.add(
            out_ts,
            person[out],
            channel,
            "consent_change",
            consent_channel=channel,
            consent_value=0,
            **self.address(channel, person[out]),
        )

"""Each lead's consent over time: the decision at capture, a withdrawal, its session partner's capture."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sandbox.bulk.columns import NEVER


@dataclass
class Consent:
    """Each lead's consent decisions: at capture, an optional withdrawal, and its session partner's capture."""

    captured_at: np.ndarray
    marketing: np.ndarray
    analytics: np.ndarray
    withdrawn_at: np.ndarray  # NEVER when none
    withdrawn_marketing: np.ndarray
    withdrawn_analytics: np.ndarray
    partner: np.ndarray  # index of the other lead of a shared session, or -1

    def at(self, lead: np.ndarray, when: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The consent in force for each lead at each time: the latest decision recorded at or before it."""
        best = self.captured_at[lead]
        marketing, analytics = self.marketing[lead].copy(), self.analytics[lead].copy()
        withdrawn = self.withdrawn_at[lead]
        use = (withdrawn <= when) & (withdrawn >= best)
        marketing = np.where(use, self.withdrawn_marketing[lead], marketing)
        analytics = np.where(use, self.withdrawn_analytics[lead], analytics)
        best = np.where(use, withdrawn, best)
        partner = self.partner[lead]
        has_partner = partner >= 0
        safe = np.where(has_partner, partner, 0)
        partner_at = np.where(has_partner, self.captured_at[safe], NEVER)
        use = has_partner & (partner_at <= when) & (partner_at >= best)
        marketing = np.where(use, self.marketing[safe], marketing)
        analytics = np.where(use, self.analytics[safe], analytics)
        return marketing, analytics

"""Bulk mode of the scenario generator: a large synthetic database written straight into the tables, for benchmarks.

The HTTP scenario (`sandbox.scenario`) is the proof that the SQL models measure what the service does; it is too
slow for a million leads. This mode writes the same shapes the service writes (leads with their consent ledger,
the outbox with its attempt log, payments, Stripe events) from a seed, vectorised with numpy and appended through
Arrow, chunk by chunk, so a million leads with ~3.7 M deliveries take a minute or two on two cores. It keeps its own
ground truth: every count the five metrics need, computed from the arrays it drew, independently of the SQL.

What it draws, per lead: a capture time over `days`, a UTM mix, marketing / analytics consent, sometimes a second
lead in the same session (its consent then governs both), sometimes a later withdrawal (an unsubscribe follows),
and rarely a MailerLite send made after a withdrawal (a consent breach for the metric to find). 28% reach checkout;
of those most pay, some fail or abandon, a few are refunded (fully) or partly refunded. Deliveries mostly succeed,
some die on a permanent 4xx, some needed a retry, a few are still retrying. Stripe events include ignored types,
duplicates, events that failed once and then succeeded, and a few that failed for good. A few payments are orphans.
"""

from sandbox.bulk.generate import generate_bulk
from sandbox.bulk.spec import BulkSpec

__all__ = ["BulkSpec", "generate_bulk"]

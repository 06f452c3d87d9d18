"""Loopback stand-ins for the external services: MailerLite / CRM / sGTM fakes and a localstripe launcher."""

from sandbox.fakes import DESTINATIONS, Destination, Sandbox, SandboxError, run_sandbox_forever
from sandbox.harness import Faults, FaultUpdate, RecordedRequest
from sandbox.localstripe import LocalStripe, LocalStripeError

__all__ = [
    "DESTINATIONS",
    "Destination",
    "FaultUpdate",
    "Faults",
    "LocalStripe",
    "LocalStripeError",
    "RecordedRequest",
    "Sandbox",
    "SandboxError",
    "run_sandbox_forever",
]

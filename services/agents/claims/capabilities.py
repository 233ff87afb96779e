"""What the payment agent's actions do, declared: each capability's steps in order,
each idempotent, with the compensation that undoes it when a later step cannot be
done (for a payment: authorize, then capture; a held authorization is voided). The
payment agent (`services.agents.claims.payment`) runs them; a test may declare its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.agents.claims.domain import PaymentInstruction
from services.agents.claims.gateway_client import GatewayClient, GatewayRefused


@dataclass
class Payment:
    """One execution of an approved payment: what is paid, under which idempotency key,
    and the gateway's reference once the authorization answered."""

    key: str
    instruction: PaymentInstruction
    reference: str | None = None


Operation = Callable[[GatewayClient, Payment], Awaitable[None]]


@dataclass(frozen=True)
class Compensation:
    description: str  # what the case log says was done
    undo: Operation


@dataclass(frozen=True)
class Step:
    name: str
    do: Operation
    compensation: Compensation | None = None  # runs when a later step cannot be done


@dataclass(frozen=True)
class Capability:
    """An action this agent executes: its steps in order, each idempotent."""

    action_type: str
    steps: tuple[Step, ...]


class DoneAfterAll(Exception):
    """A compensation found that the step it was to undo went through after all (the
    step's answer was lost): the action is complete, nothing to undo."""


async def _authorize(client: GatewayClient, payment: Payment) -> None:
    answer = await client.authorize(
        payment.key,
        payment.instruction.amount,
        payment.instruction.currency,
        payment.instruction.payee_account,
    )
    payment.reference = answer["payment_ref"]


async def _capture(client: GatewayClient, payment: Payment) -> None:
    assert payment.reference is not None
    await client.capture(payment.reference)


async def _void(client: GatewayClient, payment: Payment) -> None:
    assert payment.reference is not None
    try:
        await client.void(payment.reference)
    except GatewayRefused as refused:
        if refused.status == 409:  # "captured; refund it instead"
            raise DoneAfterAll(payment.reference) from None
        raise


ISSUE_PAYMENT = Capability(
    "issue_payment",
    steps=(
        Step("authorize", _authorize, Compensation("void the authorization", _void)),
        Step("capture", _capture),
    ),
)
CAPABILITIES = {capability.action_type: capability for capability in (ISSUE_PAYMENT,)}

import uuid
from decimal import Decimal

import pytest

from apps.payments import logic
from apps.payments.models import Payment
from apps.payments.schemas import PaymentCompleted, PaymentFailed


@pytest.fixture
def published(monkeypatch) -> list[tuple[str, object]]:
    """What the logic hands to the outbox, recorded instead of written."""
    events: list[tuple[str, object]] = []
    monkeypatch.setattr(
        logic,
        "publish_on_commit",
        lambda subject, data, **options: events.append((subject, data)),
    )
    return events


def take(order_id: int = 1, token: str = "tok_visa", amount: str = "12.50") -> Payment:
    return logic.payment_take(
        order_id=order_id,
        order_reference=uuid.uuid4(),
        amount=Decimal(amount),
        payment_token=token,
    )


@pytest.mark.parametrize(
    ("token", "amount", "reason"),
    [
        ("tok_visa", "1.00", ""),
        ("tok_decline", "1.00", "card_declined"),
        ("tok_decline_insufficient_funds", "1.00", "card_declined"),
        ("tok_visa", "0.00", "invalid_amount"),
    ],
)
def test_authorize_declines_tokens_starting_with_tok_decline(token, amount, reason):
    assert logic.authorize(payment_token=token, amount=Decimal(amount)) == reason


@pytest.mark.django_db
def test_payment_take_records_and_announces_a_completed_payment(
    published, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        payment = take(order_id=41)

    payment.refresh_from_db()
    assert (payment.order_id, payment.amount, payment.status) == (41, Decimal("12.50"), "completed")
    assert published == [
        (
            "payments.completed",
            PaymentCompleted(payment_id=payment.pk, order_id=41, amount=Decimal("12.50")),
        )
    ]


@pytest.mark.django_db
def test_payment_take_records_and_announces_a_declined_payment(
    published, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        payment = take(order_id=42, token="tok_decline")

    payment.refresh_from_db()
    assert (payment.status, payment.failure_reason) == ("failed", "card_declined")
    assert published == [
        (
            "payments.failed",
            PaymentFailed(
                payment_id=payment.pk, order_id=42, amount=Decimal("12.50"), reason="card_declined"
            ),
        )
    ]


@pytest.mark.django_db
def test_payment_take_again_charges_nothing_and_repeats_the_outcome(
    published, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        first = take(order_id=43, token="tok_decline")
        again = take(order_id=43, token="tok_visa", amount="99.00")

    assert again.pk == first.pk
    assert Payment.objects.filter(order_id=43).count() == 1
    assert (again.status, again.amount) == ("failed", Decimal("12.50"))
    assert [subject for subject, _ in published] == ["payments.failed", "payments.failed"]

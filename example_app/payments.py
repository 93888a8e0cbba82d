"""Payments and refunds: at most once per ``Idempotency-Key``, audited durably.

``@idempotent`` is outermost, so a replayed retry neither charges again nor
writes a second audit entry; ``durable=True`` stores the entry before the
response leaves. Card numbers in the body are masked by the audit redactor.
``"simulate": "crash-after-charge"`` makes the view fail once the charge is
committed, as a processor timeout would: the key keeps that 500, so retries
get it replayed instead of charging again. ``"simulate": "slow-processor"``
takes a few seconds before charging, as a slow card processor does (a
retry meanwhile gets 409: the first request still holds the key).
"""

from __future__ import annotations

import threading

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import func, select

from flask_resilience import AuditEventType, Problem, audited, idempotent

from .auth import require_user
from .models import Booking, Charge, db
from .validation import int_field, json_body, text_field

SLOW_PROCESSOR_SECONDS = 3.0

payments_blueprint = Blueprint("payments", __name__, url_prefix="/api")


def charge_count() -> int:
    """How many charges and refunds were made (the demo's proof of "once")."""
    return int(db.session.execute(select(func.count()).select_from(Charge)).scalar_one())


@payments_blueprint.post("/payments")
@idempotent(required=True)
@audited(AuditEventType.PAYMENT_PROCESSED, resource="payment", include_body=True, durable=True)
def pay() -> ResponseReturnValue:
    user = require_user()
    body = json_body()
    booking_id = int_field(body, "booking_id", 1, 2**31 - 1)
    amount = int_field(body, "amount_cents", 1, 10_000_000)
    text_field(body, "card_number", 32)  # the fake processor only checks it is there
    booking = db.session.get(Booking, booking_id)
    if booking is None or booking.user_id != user.name:
        raise Problem(404, "unknown-booking", "Unknown booking", f"You have no booking {booking_id}.")
    if body.get("simulate") == "slow-processor":
        threading.Event().wait(SLOW_PROCESSOR_SECONDS)
    charge = Charge(user_id=user.name, booking_id=booking_id, amount_cents=amount)
    db.session.add(charge)
    db.session.commit()
    if body.get("simulate") == "crash-after-charge":
        raise RuntimeError(f"the card processor failed after charge {charge.id}")
    return jsonify(payment=charge.as_dict(), charges=charge_count()), 201


@payments_blueprint.post("/refunds")
@idempotent(required=True)
@audited(AuditEventType.REFUND_ISSUED, resource="refund", include_body=True, durable=True)
def refund() -> ResponseReturnValue:
    user = require_user()
    payment_id = int_field(json_body(), "payment_id", 1, 2**31 - 1)
    payment = db.session.get(Charge, payment_id)
    if payment is None or payment.user_id != user.name or payment.amount_cents <= 0:
        raise Problem(404, "unknown-payment", "Unknown payment", f"You have no payment {payment_id}.")
    already = db.session.execute(select(Charge.id).where(Charge.refund_of == payment_id)).first()
    if already is not None:
        raise Problem(409, "already-refunded", "Already refunded", f"Payment {payment_id} was refunded.")
    credit = Charge(
        user_id=user.name,
        booking_id=payment.booking_id,
        refund_of=payment_id,
        amount_cents=-payment.amount_cents,
    )
    db.session.add(credit)
    db.session.commit()
    return jsonify(refund=credit.as_dict(), charges=charge_count()), 201

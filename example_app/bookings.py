"""Bookings: stored with Flask-SQLAlchemy, audited, invalidating cached data.

A booking is cached in the data cache under the tag ``booking-<id>``; a
change invalidates that tag and ``flights`` (seat counts change).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from flask_resilience import (
    AuditEventType,
    Problem,
    Resilience,
    StoreUnavailableError,
    cached,
    invalidate_cache_by_tag,
    log_data_change,
)

from .auth import require_user
from .models import Booking, db
from .validation import int_field, json_body, text_field

logger = logging.getLogger("example_app.bookings")

bookings_blueprint = Blueprint("bookings", __name__, url_prefix="/api/bookings")


def _data_cache() -> Any:
    resilience: Resilience = current_app.extensions["example_resilience"]
    return resilience.cache


def _booking_tag(booking_id: int) -> str:
    return f"booking-{booking_id}"


def _owned(booking_id: int, user: str) -> Booking:
    booking = db.session.get(Booking, booking_id)
    if booking is None or booking.user_id != user:
        raise Problem(404, "unknown-booking", "Unknown booking", f"You have no booking {booking_id}.")
    return booking


def _record(event: AuditEventType, booking_id: int, changes: dict[str, Any], user: str) -> None:
    """Inside the transaction: the entry is written when it commits (and
    recorded as ROLLED_BACK if it does not)."""
    log_data_change(event, "booking", booking_id, changes, user_id=user, on_commit=True)


def _invalidate(booking_id: int) -> None:
    try:
        invalidate_cache_by_tag("flights", "bookings", _booking_tag(booking_id))
    except StoreUnavailableError as exc:
        # The change is committed: answering 5xx would make the client retry
        # (and book twice). This worker keeps the invalidations and applies
        # them as soon as Redis answers again; it serves no stale copy meanwhile.
        logger.warning("booking %s saved; its cache invalidation waits for Redis: %s", booking_id, exc)


@bookings_blueprint.post("")
def create_booking() -> ResponseReturnValue:
    user = require_user()
    body = json_body()
    booking = Booking(
        user_id=user.name,
        flight=text_field(body, "flight", 16),
        passenger=text_field(body, "passenger"),
        seats=int_field(body, "seats", 1, 9) if "seats" in body else 1,
    )
    db.session.add(booking)
    db.session.flush()  # assigns the id the audit entry names
    created = booking.as_dict()
    _record(
        AuditEventType.CREATE,
        booking.id,
        {name: {"old": None, "new": created[name]} for name in Booking.EDITABLE},
        user.name,
    )
    db.session.commit()
    _invalidate(booking.id)
    return jsonify(created), 201, {"Location": f"/api/bookings/{booking.id}"}


@bookings_blueprint.get("")
@cached(ttl=300, tags=["bookings"], per_user=True)
def list_bookings() -> ResponseReturnValue:
    """The caller's bookings: one cached copy per user (keyed on the principal)."""
    user = require_user()
    found = db.session.execute(select(Booking).where(Booking.user_id == user.name).order_by(Booking.id))
    return jsonify(bookings=[booking.as_dict() for booking in found.scalars()])


@bookings_blueprint.get("/<int:booking_id>")
def get_booking(booking_id: int) -> ResponseReturnValue:
    user = require_user()

    def load() -> dict[str, Any]:
        booking: dict[str, Any] = _owned(booking_id, user.name).as_dict()
        return booking

    # Scoped to the user in the key: another user's request never sees it.
    found = _data_cache().get_or_set(
        f"booking:{user.name}:{booking_id}", load, ttl=300, tags=[_booking_tag(booking_id)]
    )
    return jsonify(found)


@bookings_blueprint.patch("/<int:booking_id>")
def update_booking(booking_id: int) -> ResponseReturnValue:
    user = require_user()
    body = json_body()
    booking = _owned(booking_id, user.name)
    changes: dict[str, Any] = {}
    for name in Booking.EDITABLE:
        if name not in body:
            continue
        new = int_field(body, name, 1, 9) if name == "seats" else text_field(body, name)
        old = getattr(booking, name)
        if new != old:
            changes[name] = {"old": old, "new": new}
            setattr(booking, name, new)
    if changes:
        _record(AuditEventType.UPDATE, booking_id, changes, user.name)
    db.session.commit()
    if changes:
        _invalidate(booking_id)
    return jsonify(booking.as_dict())


@bookings_blueprint.delete("/<int:booking_id>")
def delete_booking(booking_id: int) -> ResponseReturnValue:
    user = require_user()
    booking = _owned(booking_id, user.name)
    gone = booking.as_dict()
    db.session.delete(booking)
    _record(
        AuditEventType.DELETE,
        booking_id,
        {name: {"old": gone[name], "new": None} for name in Booking.EDITABLE},
        user.name,
    )
    db.session.commit()
    _invalidate(booking_id)
    return "", 204

"""The example's tables (Flask-SQLAlchemy; SQLite unless ``DATABASE_URL`` is set)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import DateTime, ForeignKey, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Booking(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "example_bookings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64), index=True)
    flight: Mapped[str] = mapped_column(String(16))
    passenger: Mapped[str] = mapped_column(String(128))
    seats: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_now)

    EDITABLE = ("flight", "passenger", "seats")

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user_id": self.user_id,
            "flight": self.flight,
            "passenger": self.passenger,
            "seats": self.seats,
            "created_at": self.created_at.isoformat() + "Z",
        }


class Charge(db.Model):  # type: ignore[name-defined,misc]
    """One fake card charge (positive) or refund (negative): counting rows
    shows a retried payment ran once, whichever worker served it."""

    __tablename__ = "example_charges"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64), index=True)
    booking_id: Mapped[int | None] = mapped_column(ForeignKey("example_bookings.id", ondelete="SET NULL"))
    refund_of: Mapped[int | None] = mapped_column(Integer, nullable=True)
    amount_cents: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_now)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "booking_id": self.booking_id,
            "refund_of": self.refund_of,
            "amount_cents": self.amount_cents,
            "created_at": self.created_at.isoformat() + "Z",
        }

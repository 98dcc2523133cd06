"""ORM schema. Every change here needs an Alembic revision in migrations/versions."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

RATING_VALUES = tuple(step / 2 for step in range(1, 11))  # 0.5, 1.0, ... 5.0
RATING_CHECK = "rating IN (" + ", ".join(f"{v:.1f}" for v in RATING_VALUES) + ")"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Movie(Base):
    __tablename__ = "movies"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(String(500))
    year: Mapped[int | None] = mapped_column(Integer)
    genres: Mapped[list[MovieGenre]] = relationship(
        back_populates="movie",
        cascade="all, delete-orphan",
        lazy="selectin",
        order_by="MovieGenre.genre",
    )

    @property
    def genre_names(self) -> list[str]:
        return [g.genre for g in self.genres]


class MovieGenre(Base):
    """A table, not a delimited string, so the genre filter is an indexed lookup."""

    __tablename__ = "movie_genres"

    movie_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("movies.id", ondelete="CASCADE"), primary_key=True
    )
    genre: Mapped[str] = mapped_column(String(64), primary_key=True)
    movie: Mapped[Movie] = relationship(back_populates="genres")

    __table_args__ = (Index("ix_movie_genres_genre", "genre", "movie_id"),)


class Rating(Base):
    """One user's stars for one movie; (user_id, movie_id) is the key, so writes upsert."""

    __tablename__ = "ratings"

    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    movie_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("movies.id", ondelete="CASCADE"), primary_key=True
    )
    rating: Mapped[float] = mapped_column(Float)
    timestamp: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint(RATING_CHECK, name="rating_half_stars"),
        Index("ix_ratings_movie_id", "movie_id"),
    )

"""Answers cached by exact input, outside the immutable models."""

from __future__ import annotations

from typing import Any


class AnswerCache:
    """Answers by exact input (model, the row as read, the request): a repeat skips the
    forward pass, never the read, so a new rating or another version is a new key."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._answers: dict[tuple, list[dict[str, Any]]] = {}

    def get(self, key: tuple) -> list[dict[str, Any]] | None:
        return self._answers.get(key)

    def remember(self, key: tuple, items: list[dict[str, Any]]) -> None:
        if self._size <= 0:
            return
        if len(self._answers) >= self._size:
            self._answers.clear()  # crude but O(1) and safe under concurrent readers
        self._answers[key] = items

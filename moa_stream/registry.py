"""Classes selectable by name (aggregator layouts, call formats, agent formats): one registry mechanism."""

from __future__ import annotations

from typing import Any, TypeVar

C = TypeVar("C", bound=type)


class Registry(dict[str, type[Any]]):
    """Name -> class; `register` is the class decorator that adds a class under its `name` attribute."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what  # what the classes are, for messages ("layout", "call format", ...)

    def register(self, cls: C) -> C:
        """Class decorator: make `cls` selectable by its `name` (a name taken by another class is an error)."""
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{cls.__name__} needs a class attribute name = '<{self.what} name>'")
        if self.get(name, cls) is not cls:
            raise ValueError(f"{self.what} name {name!r} is taken by {self[name].__name__}")
        self[name] = cls
        return cls

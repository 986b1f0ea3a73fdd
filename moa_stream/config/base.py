"""What every config model shares: unknown fields are errors that name them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A pydantic model that refuses fields it does not define (a misspelled option is an error)."""

    model_config = ConfigDict(extra="forbid")

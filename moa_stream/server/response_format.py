"""OpenAI's `response_format` (text, json_object, json_schema) as typed models, turned into the engine's request.

The answer (in MoA modes: the aggregator's) is then constrained by `SamplingParams.structured`. Every
json_schema is constrained as OpenAI's `strict: true` would be (the token mask admits nothing else), so
`strict: false` is accepted and gives the same guarantee.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine import InvalidSamplingError, JsonObject, JsonSchema, StructuredOutput
from engine.structured_state import structurer_for
from moa_stream import MoA

from .errors import APIError


class TextFormat(BaseModel):
    """Free text (the default)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]

    def structured(self) -> StructuredOutput | None:
        """Nothing to constrain."""
        return None


class JsonObjectFormat(BaseModel):
    """Any one JSON object."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["json_object"]

    def structured(self) -> StructuredOutput | None:
        """Any JSON object."""
        return JsonObject()


class JsonSchemaSpec(BaseModel):
    """The `json_schema` object: a name, the schema, and OpenAI's optional strict flag and description."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="a-z, A-Z, 0-9, _ and -, at most 64")
    json_schema: dict[str, Any] = Field(alias="schema", description="the JSON schema the answer must follow")
    description: str | None = None
    strict: bool | None = None


class JsonSchemaFormat(BaseModel):
    """JSON valid under a schema."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec

    def structured(self) -> StructuredOutput | None:
        """The schema as the engine's JsonSchema."""
        return JsonSchema.of(self.json_schema.json_schema)


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]
"""One of OpenAI's response formats, told apart by `type`."""


def answer_structure(moa: MoA, response_format: ResponseFormat | None) -> StructuredOutput | None:
    """The answer's structured output, compiled once for the aggregator's tokenizer so a schema it cannot follow
    is a 400 before any agent runs (the engine's grammar cache then holds it for the run)."""
    if response_format is None:
        return None
    try:
        structured = response_format.structured()
        if structured is not None:
            engine = moa.engines[moa.config.aggregator.backend]
            structurer_for(engine.tokenizer, engine.vocab_size, engine.eos_token_ids).compile(structured)
    except InvalidSamplingError as exc:
        raise APIError(400, f"response_format: {exc}", param="response_format",
                       code="invalid_response_format") from exc
    return structured

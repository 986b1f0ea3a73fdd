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
from .grammar_limits import GrammarLimits, check_schema


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


def answer_structure(response_format: ResponseFormat | None, limits: GrammarLimits) -> StructuredOutput | None:
    """The answer's structured output, checked to parse and to be within the server's limits (a 400 otherwise);
    `check_compiles` then compiles it, on a worker thread."""
    if response_format is None:
        return None
    if isinstance(response_format, JsonSchemaFormat):
        check_schema(response_format.json_schema.json_schema, "response_format.json_schema.schema",
                     "response_format", limits)
    try:
        return response_format.structured()
    except InvalidSamplingError as exc:
        raise APIError(400, f"response_format: {exc}", param="response_format",
                       code="invalid_response_format") from exc


def check_compiles(moa: MoA, structured: StructuredOutput | None, param: str) -> StructuredOutput | None:
    """Compile `structured` once for the aggregator's tokenizer, so a schema it cannot follow is a 400 before any
    agent runs (the engine's grammar cache then holds it for the run). Blocking: run it on a worker thread."""
    if structured is None:
        return None
    engine = moa.engines[moa.config.aggregator.backend]
    try:
        structurer_for(engine.tokenizer, engine.vocab_size, engine.eos_token_ids).compile(structured)
    except InvalidSamplingError as exc:
        raise APIError(400, f"{param}: {exc}", param=param, code=f"invalid_{param}") from exc
    return structured


def compile_too_slow(param: str, limit_s: float) -> APIError:
    """The 400 for a grammar whose compile ran past the server's limit."""
    return APIError(400, f"{param}: the grammar took longer than {limit_s:g} s to compile; simplify the schema "
                    "(fewer or smaller repeats, fewer alternatives)", param=param, code="schema_too_complex")

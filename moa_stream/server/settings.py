"""How the OpenAI-compatible server listens and what it allows."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from moa_stream import ToolCacheConfig
from moa_stream.config import check_agent_format

DEFAULT_MAX_BODY_BYTES = 4 << 20  # 4 MiB: a whole 128k-token context is ~0.5 MB of text


class ServerSettings(BaseModel):
    """How the server listens and what it allows."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="interface to bind; loopback by default")
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = Field(None, description="when set, requests need 'Authorization: Bearer <key>'")
    request_timeout_s: float = Field(300.0, gt=0, description="a request running longer is stopped")
    max_concurrency: int = Field(8, ge=1, description="requests in flight at once; more get HTTP 429")
    model_id: str = Field("moa-stream", min_length=1, description="model id; '<id>:<mode>' picks a mode")
    call_format: str = Field("hermes", description="how tools are shown and calls written (a registered call format)")
    agent_format: str | None = Field(None, description="context format of the config's tool-using agents that set "
                                     "none (chat, thread, compact); a request's `agent_format` overrides it")
    tool_cache: ToolCacheConfig | None = Field(None, description="tool cache of the config's tool-using agents that "
                                               "set none (null: theirs, or off)")
    max_sessions: int = Field(64, ge=1, description="conversations kept for X-Session-Id; the least recent goes first")
    session_ttl_s: float = Field(600.0, gt=0, description="a session idle this long is closed (its pin ends too)")
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024, description="a larger request body gets HTTP 413, "
                                "unread")
    max_tokens: int | None = Field(None, ge=1, description="most tokens in any answer (a request asking more gets "
                                   "this many)")
    compile_timeout_s: float = Field(10.0, gt=0, description="a response_format or tools grammar compiling longer "
                                     "is a 400")
    max_schema_bytes: int = Field(65_536, ge=1, description="largest response_format / tool schema compiled")
    max_schema_repeat: int = Field(4_096, ge=1, description="most atoms a schema's regex pattern may expand to "
                                   "(its {m,n} repeats written out)")

    @field_validator("agent_format")
    @classmethod
    def _known_format(cls, name: str | None) -> str | None:
        return check_agent_format(name)

"""The one error tree of moa-stream: everything raised on purpose is a `MoAStreamError`.

```
MoAStreamError
├── EngineError (engine/: bad tokens or sampling, capacity, closed sequences, backends, model loading)
├── ConfigError    fix the config field the message names
├── MoAError       the turn could not produce an answer; read the agent_error events for why
├── MqttBusError   (moa_stream.bus) the broker URL, connection or a message was wrong
└── DatasetError   (eval) a dataset is missing or malformed
```
"""

from __future__ import annotations

from engine import EngineError, MoAStreamError

__all__ = ["ConfigError", "EngineError", "MoAError", "MoAStreamError"]


class ConfigError(MoAStreamError, ValueError):
    """A config is invalid: the message names the field and the allowed values; fix that field."""


class MoAError(MoAStreamError, RuntimeError):
    """The MoA turn cannot produce an answer (e.g. every proposer failed): see the agent_error events for why."""

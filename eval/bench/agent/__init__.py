"""The agent bench: stateful agent steps against the stateless ways other stacks serve them.

Every agent replays a BFCL v4 multi-turn trace (ground-truth calls run on BFCL's own classes), so every mode
reads and writes the same tokens whatever the model would have chosen. A step appends Δ (the previous tool
result and any next user turn), generates the call forced to the trace's text by a grammar, then runs the tool
(the real function plus a simulated latency). Modes, one class each:

- `stateful`: one resident sequence per agent, appended in O(Δ), pinned while its tool runs;
- `prefix-cache`: a new sequence per step opened on the whole conversation, sharing cached blocks (how vLLM and
  SGLang serve a client that re-sends the conversation), closed after the step;
- `reprefill`: a new sequence per step with a fresh cache salt, so nothing is shared (no cache);
- `llamacpp`: llama.cpp's server (llama-cpp-python) re-sent the conversation every step, its prompt cache on.

Several agents run interleaved on one engine whose KV budget is smaller than their summed contexts. Two more
sections: speculative tool calls off and on per tool latency (the real Agent, `speculation`), and prompt-lookup
decoding off and on over the forced calls (`prompt_lookup_bench`). Engines come from a factory per backend.
"""

from .engines import EngineFactory, LlamaCppFactory, TransformersFactory
from .mode_run import ModeRun
from .modes import LOCAL_MODES, AgentMode, LlamaServerAgent, ReopeningAgent, StatefulAgent, StepRecord, make_mode
from .prompt_lookup_bench import PromptLookupBenchConfig
from .runner import (
    TARGETS,
    AgentBenchConfig,
    conversations,
    kv_bytes_per_token,
    kv_footprint_tokens,
    run_agent_bench,
    run_llamacpp_mode,
    run_local_mode,
)
from .speculation import SPECULATORS, SpeculationBenchConfig, TraceAgent
from .workload import ChatRendering, Segment, Workflow, call_text, literal_grammar, workflows

__all__ = [
    "LOCAL_MODES",
    "SPECULATORS",
    "TARGETS",
    "AgentBenchConfig",
    "AgentMode",
    "ChatRendering",
    "EngineFactory",
    "LlamaCppFactory",
    "LlamaServerAgent",
    "ModeRun",
    "PromptLookupBenchConfig",
    "ReopeningAgent",
    "Segment",
    "SpeculationBenchConfig",
    "StatefulAgent",
    "StepRecord",
    "TraceAgent",
    "TransformersFactory",
    "Workflow",
    "call_text",
    "conversations",
    "kv_bytes_per_token",
    "kv_footprint_tokens",
    "literal_grammar",
    "make_mode",
    "run_agent_bench",
    "run_llamacpp_mode",
    "run_local_mode",
    "workflows",
]

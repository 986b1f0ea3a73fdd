"""What a turn runs for a mode: MoA's proposer layers, or a debate laid out as layers of the same agents.

A debate is a staircase too. Round 1 is the agents answering the question, as a proposer layer does. Round k + 1
is a layer of the same agents (named `name@k+1`), each a reader of round k (moa_stream/moa/reader.py) with the
debate instruction after its persona: in `debate` it reads round k as it streams, through the `staircase` layout
(by KV append: each intake computes its chunks), and starts writing on round k's first chunks; in
`debate-sequential` it waits for round k's whole answers (`classic`), as debate papers run it. Each round reads
every agent's answer, its own included: that is what lets it start before its own previous answer is over.

The answer is an aggregator reading the last round (through the round layout), or with `final: last-round` the
chosen agent's last-round answer: that agent's last round is then the turn's reader, and streams to the user.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import prompts
from ..config import AgentConfig, MoAConfig
from ..events import DEBATE_MODES

# How a debate round reads the round before it, and how the answer reads the last round, per debate mode.
ROUND_LAYOUTS = {"debate": "staircase", "debate-sequential": "classic"}
assert set(ROUND_LAYOUTS) == set(DEBATE_MODES)


@dataclass(frozen=True)
class Pipeline:
    """The agents of one turn: proposer layers, the agent whose text is the answer, and how each reads."""

    layers: list[list[AgentConfig]]
    aggregator: AgentConfig
    mode: str  # the answer's layout over the last layer
    layer_modes: tuple[str, ...]  # the layouts of layers 1.. over the layer before each (missing ones: `mode`)
    shape: str  # "moa" or "debate": turns of one shape share the agents' live sequences


def pipeline(config: MoAConfig, mode: str) -> Pipeline:
    """The pipeline `mode` runs on `config`: its layers as written, or, for a debate mode, its rounds."""
    if mode not in ROUND_LAYOUTS:
        return Pipeline(config.layers, config.aggregator, mode, tuple(config.layer_modes or ()), "moa")
    debate, read = config.debate, ROUND_LAYOUTS[mode]
    agents = config.debaters()
    rounds = [[in_round(a, i, r, len(agents)) for i, a in enumerate(agents)] for r in range(debate.rounds)]
    if debate.final == "aggregator":
        return Pipeline(rounds, config.aggregator, read, (read,) * (debate.rounds - 1), "debate")
    final = next((i for i, a in enumerate(agents) if a.name == debate.final_agent), 0)
    return Pipeline(rounds[:-1], rounds[-1][final], read, (read,) * (debate.rounds - 2), "debate")


def round_name(name: str, round_index: int) -> str:
    """An agent's name in a round (0-based): its own in the first, `name@k` in the k-th (1-based) after it."""
    return name if round_index == 0 else f"{name}@{round_index + 1}"


def in_round(agent: AgentConfig, index: int, round_index: int, agents: int) -> AgentConfig:
    """The agent as it runs in a round: itself in the first, a reader with the debate instruction after it."""
    if round_index == 0:
        return agent
    persona = f"{agent.system_prompt}\n\n" if agent.system_prompt else ""
    system = prompts.render("debate_system", persona=persona, index=index + 1, agents=agents)
    return agent.model_copy(update={"name": round_name(agent.name, round_index), "system_prompt": system})

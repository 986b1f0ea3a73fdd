"""`moa-stream bench`: the engine (append vs re-prefill, batching), MoA time-to-first-token per mode, server load."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from moa_stream.cli import positive_int

from . import debate_command as bench_debate
from . import layouts_command as bench_layouts
from . import ttft_command as bench_ttft
from .options import add_moa_arguments, run_on_moa

# ---------------------------------------------------------------------------------------------- bench engine


def _comma_list(cast: type, minimum: float, wants: str) -> Callable[[str], tuple[Any, ...]]:
    """An argparse type for a comma-separated list of numbers >= minimum (`wants` says what in the error)."""

    def parse(text: str) -> tuple[Any, ...]:
        try:
            out = tuple(cast(x) for x in text.split(",") if x.strip())
        except ValueError:
            out = ()
        if not out or any(v < minimum for v in out):
            raise argparse.ArgumentTypeError(f"wants {wants}, got {text!r}")
        return out

    return parse


_parse_streams = _comma_list(int, 1, "positive integers like 1,4,8")
_parse_latencies = _comma_list(float, 0, "milliseconds >= 0 like 0,200,1000")
_parse_fractions = _comma_list(float, 0, "fractions in (0, 1] like 1.0,0.9,0.7,0.5")


def _add_engine_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--model", default=None, help="HF model id or local folder (default: the offline SmolLM2)")
    p.add_argument("--context", type=positive_int, default=2048, metavar="N", help="tokens in the live sequence (2048)")
    p.add_argument("--delta", type=positive_int, default=16, metavar="N", help="tokens appended (16)")
    p.add_argument("--decode", type=positive_int, default=32, metavar="N", help="tokens decoded per stream (32)")
    p.add_argument("--streams", type=_parse_streams, default=(1, 4, 8), metavar="LIST",
                   help="concurrent stream counts to measure, comma-separated (1 and 4 always run)")
    p.add_argument("--backend", choices=("transformers", "llamacpp"), default=None,
                   help="engine to bench (default: the default config's, llamacpp for the default model on a CPU)")
    p.add_argument("--no-peer", dest="peer", action="store_false",
                   help="skip the peer columns (llama.cpp's server on the same GGUF, 1 and 4 requests)")


def _engine_table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=f"engine bench: {result['model']} on {result['backend']}", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("note")
    ctx, delta = result["context_tokens"], result["delta_tokens"]
    rows = [
        ("reprefill_ms", f"{result['reprefill_ms']:.1f}", f"prefill {ctx}+{delta} tokens from scratch"),
        ("append_ms", f"{result['append_ms']:.1f}",
         f"append {delta} tokens to the live sequence ({result['append_tokens_computed']} computed)"),
        ("append_speedup", f"{result['append_speedup']:.1f}x", "target >= 10x"),
        ("prefix_open_ms", f"{result['prefix_open_ms']:.1f}",
         f"new sequence sharing the cached {ctx}-token prefix ({result['prefix_open_tokens_computed']} computed)"),
        ("fork_ms", f"{result['fork_ms']:.2f}", f"{result['fork_tokens_computed']} tokens computed"),
    ]
    for n, rate in sorted(result["tok_s"].items(), key=lambda kv: int(kv[0])):
        rows.append((f"tok_s_{n}", f"{rate:.1f}", f"decode tokens/s, {n} concurrent stream(s)"))
    rows.append(("batch_speedup", f"{result['batch_speedup']:.2f}x", "tok_s_4 / tok_s_1, target >= 1.8x"))
    for n in (1, 4):
        rows.append((f"sampled_tok_s_{n}", f"{result[f'sampled_tok_s_{n}']:.1f}",
                     f"decode tokens/s, {n} stream(s), temperature 0.7, top-p 0.9, repetition penalty 1.1"))
        rows.append((f"sampled_vs_greedy_{n}", f"{result[f'sampled_vs_greedy_{n}']:.2f}",
                     f"sampled_tok_s_{n} / tok_s_{n}, target >= 0.9"))
    if result.get("peer_tok_s_4") is not None:
        rows.append(("peer_tok_s_1", f"{result['peer_tok_s_1']:.1f}", "llama.cpp server, 1 request"))
        rows.append(("peer_tok_s_4", f"{result['peer_tok_s_4']:.1f}", "llama.cpp server, 4 concurrent requests"))
        rows.append(("tok_s_4_vs_peer", f"{result['tok_s_4_vs_peer']:.2f}x", "tok_s_4 / peer_tok_s_4, target >= 1.4x"))
    for row in rows:
        table.add_row(*row)
    return table


def _backend_kind(args: argparse.Namespace) -> str:
    """`--backend`, else the default config's for the model (llamacpp for the default model on a CPU)."""
    from moa_stream import default_backend

    return str(args.backend or default_backend(args.model).kind)


def _main_engine(args: argparse.Namespace) -> int:
    from eval.bench.engine import bench_engine

    backend = _backend_kind(args)
    result = bench_engine(args.model, backend=backend, peer=args.peer, context_tokens=args.context,
                          delta_tokens=args.delta, decode_tokens=args.decode, streams=args.streams).to_dict()
    if args.json:
        print(json.dumps(result))
    else:
        from rich.console import Console

        Console().print(_engine_table(result))
    return 0


# ---------------------------------------------------------------------------------------------- bench load


def _add_load_arguments(p: argparse.ArgumentParser) -> None:
    add_moa_arguments(p)
    p.add_argument("--mode", default=None, help="MoA mode the clients ask for (default: the config's)")
    p.add_argument("--clients", type=positive_int, default=64, metavar="N", help="concurrent streaming clients (64)")
    p.add_argument("--requests", type=positive_int, default=128, metavar="N", help="requests in all (128)")
    p.add_argument("--max-tokens", type=positive_int, default=8, metavar="N",
                   help="answer tokens per request; proposers too with the default config (8)")
    p.add_argument("--max-concurrency", type=positive_int, default=None, metavar="N",
                   help="server's requests in flight; more get 429 and retry (default: --clients)")
    p.add_argument("--duration", type=float, default=600.0, metavar="S", help="stop sending after S seconds (600)")


def _load_table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=f"load: {result['clients']} streaming clients, {result['requests']} requests")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key in ("duration_s", "completed", "rate_limited", "errors", "ttft_p50_s", "ttft_p99_s", "back_to_baseline"):
        table.add_row(key, str(result[key]))
    for moment in ("before", "after"):
        table.add_row(moment, ", ".join(f"{k} {v}" for k, v in result[moment].items()))
    return table


def _main_load(args: argparse.Namespace) -> int:

    from eval.bench.load import run_load
    from moa_stream import MoA, MoAConfig

    cfg = MoAConfig.load(args.config) if args.config else MoAConfig.default(max_tokens=args.max_tokens)
    model = f"moa-stream:{args.mode}" if args.mode else "moa-stream"

    async def load(moa: MoA) -> dict[str, Any]:
        report = await run_load(moa, clients=args.clients, requests=args.requests, max_tokens=args.max_tokens,
                                max_concurrency=args.max_concurrency, duration_s=args.duration, model=model)
        return report.to_dict()

    result = run_on_moa(cfg, args.model, load)
    if args.json:
        print(json.dumps(result))
    else:
        from rich.console import Console

        Console().print(_load_table(result))
    return 0 if result["back_to_baseline"] and not result["errors"] else 1


# ---------------------------------------------------------------------------------------------- bench agent

_AGENT_QUICK = {"agents": (1, 8), "steps": (6,), "cases": 16}
_SPECULATION_QUICK = {"cases": 1, "steps": 4}  # the speculation section of --quick: one case, four steps


def _add_agent_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--model", default=None, help="HF model id or local folder (default: the offline SmolLM2)")
    p.add_argument("--agents", type=_parse_streams, default=(1, 4, 8), metavar="LIST",
                   help="interleaved agent counts, comma-separated (1,4,8); more than one share a KV budget "
                        "smaller than their summed contexts")
    p.add_argument("--steps", type=_parse_streams, default=(6, 35), metavar="LIST",
                   help="workflow lengths in steps (6,35); several agents run the shortest only, unless --all-pairs")
    p.add_argument("--all-pairs", action="store_true", help="run every agent count at every workflow length")
    p.add_argument("--cases", type=positive_int, default=40, metavar="N",
                   help="BFCL v4 multi-turn base cases to draw workflows from (40)")
    p.add_argument("--tool-latency-ms", type=float, default=200.0, metavar="MS",
                   help="simulated time every tool call takes on top of the real function (200)")
    p.add_argument("--kv-fraction", type=_parse_fractions, default=(0.9,), metavar="LIST",
                   help="KV budgets of the multi-agent runs as fractions of what the agents need together, shared "
                        "prefixes counted once, comma-separated (0.9; e.g. 1.0,0.9,0.7,0.5 runs each; "
                        "ratio_prefix_cache_8 is the 0.9 run's, or the first listed without 0.9)")
    p.add_argument("--pin-ttl", type=float, default=None, metavar="S",
                   help="seconds a stateful agent's sequence stays pinned while its tool runs (default: until it "
                        "returns)")
    p.add_argument("--modes", default=",".join(_LOCAL_MODES), metavar="LIST",
                   help=f"local modes, comma-separated ({','.join(_LOCAL_MODES)})")
    p.add_argument("--no-llamacpp", action="store_true",
                   help="skip the llama.cpp server peer (it serves the largest agent count, shortest workflow)")
    p.add_argument("--backend", choices=("transformers", "llamacpp"), default=None,
                   help="engine the local modes run on (default: the default config's, llamacpp for the default "
                        "model on a CPU)")
    p.add_argument("--no-speculation", dest="speculation", action="store_false",
                   help="skip the speculative tool-call section (speculation off vs on per tool latency)")
    p.add_argument("--speculation-latencies", type=_parse_latencies, default=(0.0, 200.0, 1000.0), metavar="MS",
                   help="tool latencies of the speculation section, comma-separated ms (0,200,1000)")
    p.add_argument("--speculation-cases", type=positive_int, default=4, metavar="N",
                   help="BFCL cases (with a pure call) the speculation section replays (4)")
    p.add_argument("--speculation-steps", type=positive_int, default=6, metavar="N",
                   help="steps of each case the speculation section replays (6)")
    p.add_argument("--speculator", default="history", metavar="NAME",
                   help="what predicts a step's call at its start: history (calls seen in an earlier run of the "
                        "same workflow) or stream-only (no prediction, the streaming start alone)")
    p.add_argument("--no-prompt-lookup", dest="prompt_lookup", action="store_false",
                   help="skip the prompt-lookup section (decode tok/s on tool-call output, drafter off vs on)")
    p.add_argument("--prompt-lookup-tokens", type=positive_int, default=8, metavar="K",
                   help="tokens a prompt-lookup draft holds at most (8)")
    p.add_argument("--quick", action="store_true",
                   help="1 and 8 agents, 6-step workflows, 16 cases, speculation on 1 case of 4 steps (overrides "
                        "--agents, --steps, --cases, --speculation-cases, --speculation-steps)")


_LOCAL_MODES = ("stateful", "prefix-cache", "reprefill")


def _agent_table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title="agent steps per mode (step = Δ appended + forced call written; tool time excluded)")
    for col in ("mode", "agents", "steps", "kv frac", "median s", "p90 s", "computed/step", "recomputed", "calls ok",
                "wall s"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for run in result["runs"]:
        frac = "-" if run["kv_fraction"] is None else f"{run['kv_fraction']:g}"
        table.add_row(run["mode"], str(run["agents"]), str(run["steps"]), frac, f"{run['step_median_s']:.3f}",
                      f"{run['step_p90_s']:.3f}", f"{run['computed_per_step_mean']:.0f}",
                      str(run["recomputed_total"]), f"{run['calls_matched']}/{run['calls']}", f"{run['wall_s']:.1f}")
    return table


def _agent_engines(args: argparse.Namespace) -> Any:
    """The engine factory of `--backend`: the GGUF on llama.cpp, or the model loaded once for transformers."""
    from eval.bench.agent import LlamaCppFactory, TransformersFactory

    if _backend_kind(args) == "llamacpp":
        return LlamaCppFactory(args.model)
    from engine import models

    return TransformersFactory(models.load(args.model))


def _main_agent(args: argparse.Namespace) -> int:
    import asyncio

    from eval.bench.agent import (
        SPECULATORS,
        TARGETS,
        AgentBenchConfig,
        PromptLookupBenchConfig,
        SpeculationBenchConfig,
        run_agent_bench,
    )
    from moa_stream import ConfigError

    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    unknown = [m for m in modes if m not in _LOCAL_MODES]
    if unknown or not modes:
        raise ConfigError(f"--modes: unknown {unknown or modes}; pick from {', '.join(_LOCAL_MODES)}")
    bad = [f for f in args.kv_fraction if not 0.0 < f <= 1.0]
    if bad:
        raise ConfigError(f"--kv-fraction: every fraction must be in (0, 1], got {bad}")
    headline = 0.9 if 0.9 in args.kv_fraction else args.kv_fraction[0]
    if args.speculator not in SPECULATORS:
        raise ConfigError(f"--speculator: unknown {args.speculator!r}; pick from {', '.join(SPECULATORS)}")
    preset = _AGENT_QUICK if args.quick else {"agents": args.agents, "steps": args.steps, "cases": args.cases}
    spec_size = _SPECULATION_QUICK if args.quick else {"cases": args.speculation_cases,
                                                      "steps": args.speculation_steps}
    speculation = SpeculationBenchConfig(latencies_ms=args.speculation_latencies, speculator=args.speculator,
                                         **spec_size) if args.speculation else None
    lookup = PromptLookupBenchConfig(max_draft=args.prompt_lookup_tokens, steps=min(preset["steps"])) \
        if args.prompt_lookup else None
    config = AgentBenchConfig(model=args.model, tool_latency_ms=args.tool_latency_ms, kv_fraction=headline,
                              kv_fractions=tuple(args.kv_fraction),
                              modes=modes, llamacpp=not args.no_llamacpp, all_pairs=args.all_pairs,
                              pin_ttl_s=args.pin_ttl, speculation=speculation, prompt_lookup=lookup, **preset)
    result = asyncio.run(run_agent_bench(_agent_engines(args), config))
    if args.json:
        print(json.dumps(result))
    else:
        from rich.console import Console

        console = Console()
        console.print(_agent_table(result))
        for key, target in TARGETS.items():
            value = result[key]
            shown = f"{value:.2f}" if value is not None else "not measured"
            console.print(f"{key} = {shown} (target >= {target})")
        for fraction, value in result["ratio_prefix_cache_8_by_budget"].items():
            shown = f"{value:.2f}" if value is not None else "not measured"
            console.print(f"ratio_prefix_cache_8 at kv fraction {fraction} = {shown} (target >= 1)")
        for key in ("speculation_alpha", "prompt_lookup_acceptance"):
            value = result[key]
            console.print(f"{key} = {value:.2f}" if value is not None else f"{key}: not measured")
        skipped = result["prompt_lookup"].get("skipped")
        if skipped:
            console.print(f"prompt lookup: {skipped}")
    return 0


# ---------------------------------------------------------------------------------------------- wiring

# name -> (add_arguments, main, one-line help)
SUBCOMMANDS: dict[str, tuple[Any, Any, str]] = {
    "engine": (_add_engine_arguments, _main_engine,
               "append vs re-prefill of a long sequence, and decode tokens/s at 1/4/8 streams"),
    "ttft": (bench_ttft.add_arguments, bench_ttft.main, "time to first token and total time of every MoA mode"),
    "debate": (bench_debate.add_arguments, bench_debate.main,
               "streaming debate vs sequential debate: TTFT, total time, what each round computed"),
    "layouts": (bench_layouts.add_arguments, bench_layouts.main,
                "answer quality of each aggregator layout vs classic on a fixed prompt set (loops, length, ROUGE-L)"),
    "load": (_add_load_arguments, _main_load,
             "concurrent streaming clients against the server on loopback: TTFT p50/p99, 429s, leaks"),
    "agent": (_add_agent_arguments, _main_agent,
              "tool-agent steps on BFCL traces: stateful vs prefix-cache vs re-prefill vs llama.cpp's server"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the bench subcommands on the `bench` parser."""
    sub = parser.add_subparsers(dest="bench", required=True, metavar="WHAT")
    for name, (add, _, help_text) in SUBCOMMANDS.items():
        add(sub.add_parser(name, help=help_text, description=help_text))


def main(args: argparse.Namespace) -> int:
    """Run the chosen bench subcommand."""
    return int(SUBCOMMANDS[args.bench][1](args))

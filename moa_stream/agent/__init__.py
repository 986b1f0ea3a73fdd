"""The tool-calling agent: its loop, events, tool cache, speculation, formats, the MoA tool proposer, and the chat
format in token ids (context.py) that every agent, MoA turns included, builds its prompts with.

Kept import-free so that `moa_stream.agent.slot` (shared with a MoA turn) can be read without the loop.
"""

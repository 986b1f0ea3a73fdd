"""The tool-calling agent: its loop, events, tool cache, speculation, formats and the MoA tool proposer.

Kept import-free so that `moa_stream.agent.slot` (shared with a MoA turn) can be read without the loop.
"""

"""The MoA turn: the staircase driver, the aggregator layouts, the context format, pacing and the proposer runner.

Kept import-free so that `moa_stream.moa.context` can be read without pulling in the turn driver.
"""

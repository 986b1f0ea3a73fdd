"""The MoA turn: the staircase driver, its readers, the aggregator layouts, debate, pacing and the proposer runner.

Kept import-free so that one module of it can be read without pulling in the turn driver.
"""

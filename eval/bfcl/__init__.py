"""BFCL multi-turn: traces replayed on its classes, next-step prediction and its scoring (`moa-stream eval`)."""

"""The conformal mathematics: numpy/scipy only (no Flower, no torch).

Scores, groups and atom keys, the paper's arcsine T-digest, exact integer ranks, the exact per-atom GC-FCP solver,
client summaries, metrics and the saved predictor.
"""

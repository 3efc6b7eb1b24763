"""Metrics shared by training (validation) and evaluation.

`f1`: the official weighted F1 (lip sync); `mult`: the CMU-MOSEI metrics.
"""

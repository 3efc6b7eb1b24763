"""Evaluation of the multimodal-to-unimodal system: MOSEI metrics of runs, the paper's Table 1."""

"""The multimodal-to-unimodal system's data.

The CMU-MOSEI pickle of the MulT repository (`mosei`) and a synthetic set in its format (`synth`).
"""

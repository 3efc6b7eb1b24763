"""Media internals: decoding guards, constant-fps frames, face detectors, tracking and mouth crops.

Users import from ``mtdistill.audio`` and ``mtdistill.video`` (and ``mtdistill.faces`` for detectors).
"""

"""Media internals: decoding guards, constant-fps frames, face detectors, tracking and mouth crops.

Users import from ``mtdistill.audio`` and ``mtdistill.video`` (and ``mtdistill.faces`` for detectors).
"""

DEFAULT_DETECTOR = "retinaface"
"""The face detector every command and API function uses unless told otherwise (`prepare`, `sync`, `score`,
`fix`, `track_faces`, ...): the one place that names it (here, so the CLI reads it without importing OpenCV).
Its weights ship inside this package, so it works offline; "haar" and "mtcnn" stay selectable."""

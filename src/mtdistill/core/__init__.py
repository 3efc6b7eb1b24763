"""The bottom layer: facts and helpers every other layer shares, and nothing else.

- `timing`  — the audio-visual clock: 16 kHz audio, 25 fps analysis, 640 samples per frame, the 5-frame window,
  the +-15 frame search range, where a frame's mel window starts;
- `quirks`  — every behaviour of the official code that differs from the papers, as one `Quirks` object;
- `errors`  — `UserError`, the one-line error every command prints with exit code 2;
- `safeio`  — atomic writes and a `torch.load` that never runs pickled code;
- `runs`    — the file names of a training run folder;
- `devices` — `--device` parsing.

Nothing here imports another mtdistill package (docs/architecture.md).
"""

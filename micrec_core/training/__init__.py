"""The training layer: the loop with early stopping and checkpoints, the GPU union path, and what identifies the
code that trained a run (paper §4.3, §5.1). Uses the layers below.
"""

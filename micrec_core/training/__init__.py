"""The training layer: the loop with early stopping and checkpoints, the GPU union path, how a CPU run keeps the
memory it frees, and what identifies the code that trained a run (paper §4.3, §5.1). Uses the layers below.
"""

"""The runs layer: one experiment's run folder, grids and sweeps, the Ray executor, executing the book's chapters
and the helpers the chapters share. Uses the layers below; the CLI (`micrec_core.cli`) sits on top.
"""

"""The models layer: the shared components (sparse graphs, propagation, templates, similarity, aggregation, sampling
and the losses each model computes from its own draws), the model interface and registry, MICRec with INMO and
LightGCN (`micrec`), and one module per baseline of Table 2 (paper §4, §5.1). Uses the data layer.
"""

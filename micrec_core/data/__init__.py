"""The data layer: reading the Amazon releases (2014, 2018, 2023 layouts), downloading them, the synthetic pair,
the inductive cross-domain split and the item features (paper §5.1 "Datasets"). Uses nothing else of micrec_core.
"""

"""micrec: a literate reproduction of MICRec (inductive, multimodal, cross-domain recommendation)."""

__version__ = "0.1.0"

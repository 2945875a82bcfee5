"""Every model by its command-line name (`micrec train --model NAME`, `micrec grid --variants`).

A new model is one module defining a `recommender.Recommender`, one line here, and one test file. The classes are
imported only when asked for, so that `config` can check a name without importing every model.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the classes are imported when asked for, so config can read the names without a cycle
    from micrec_core.models.recommender import Recommender

# name -> "module:Class". MICRec, INMO and LightGCN share one class: MICRec is INMO's template backbone plus
# modality aggregation and the contrastive loss, and LightGCN is that backbone with id embeddings instead of
# templates, so the config (model, ablation) switches the parts on and off and the three share the GPU union path.
REGISTRY: dict[str, str] = {
    "micrec": "micrec_core.models.micrec:MICRecFamily",
    "inmo": "micrec_core.models.micrec:MICRecFamily",
    "lightgcn": "micrec_core.models.micrec:MICRecFamily",
    "neumf": "micrec_core.models.neumf:NeuMF",
    "multvae": "micrec_core.models.multvae:MultVAE",
    "ngcf": "micrec_core.models.ngcf:NGCF",
    "sgl": "micrec_core.models.sgl:SGL",
    "xsimgcl": "micrec_core.models.xsimgcl:XSimGCL",
    "imcgae": "micrec_core.models.imcgae:IMCGAE",
    "idcf": "micrec_core.models.idcf:IDCF",
    "unicdr": "micrec_core.models.unicdr:UniCDR",
    "ppa": "micrec_core.models.ppa:PPA",
    "alpharec": "micrec_core.models.alpharec:AlphaRec",
}


def model_class(name: str) -> type[Recommender]:
    """The class registered under `name`."""
    if name not in REGISTRY:
        raise ValueError(f"--model must be one of {', '.join(REGISTRY)}, got {name!r}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


# Every model of the paper's Table 2, in its order, with the paper's row name and the family the book groups it in;
# a row exists in the book once its name is in REGISTRY.
TABLE2: dict[str, tuple[str, str]] = {
    "neumf": ("NeuMF", "collaborative filtering"),
    "multvae": ("Mult-VAE", "collaborative filtering"),
    "ngcf": ("NGCF", "collaborative filtering"),
    "imcgae": ("IMC-GAE", "inductive"),
    "idcf": ("IDCF", "inductive"),
    "lightgcn": ("LightGCN", "collaborative filtering"),
    "unicdr": ("UniCDR", "cross-domain"),
    "ppa": ("PPA", "cross-domain"),
    "sgl": ("SGL", "self-supervised"),
    "xsimgcl": ("XSimGCL", "self-supervised"),
    "alpharec": ("AlphaRec", "language model"),
    "inmo": ("INMO", "inductive"),
    "micrec": ("MICRec", "ours"),
}


def table2_models() -> list[str]:
    """The registered models in the order of the paper's Table 2."""
    return [name for name in TABLE2 if name in REGISTRY]

"""Training (paper §4.3 joint loss, §5.1 protocol): Adam, 100 batches per epoch per domain, early stopping.

One optimizer step = one BPR batch (and one SE batch) from each domain plus 64 sampled overlapping users for the
contrastive term: L = (L_BPR^A + L_BPR^B) + beta (L_SE^A + L_SE^B) + gamma L_CL (eq-joint). A batch holds
ceil(|E_tr| / batches_per_epoch) triples, so an epoch draws as many triples as there are training interactions.
Validation NDCG@20 (seen users x seen items, E_tr masked) after every epoch; patience 50. By default, when the
domains are coupled (the contrastive term is on) one criterion, the mean over the two domains, decides; otherwise
each domain is its own model (INMO, LightGCN, no-cd) and keeps its own best epoch (`Config.best_epoch`).

The history records each term of the loss on its own per epoch, and every GRAD_EVERY epochs how the gradient of
gamma L_CL compares with that of BPR + beta SE on the shared parameters, so that one term's dominance cannot hide
inside the total. A loss that goes non-finite or grows by EXPLOSION over its first epoch stops the run
(`TrainingDiverged`): no result is written for it. A checkpoint is written atomically after every epoch (plain
tensors and numbers only: it loads with `weights_only=True`), and `resume` continues a killed run to the same result.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from micrec_core.atomic import atomic_path
from micrec_core.config import MAX_SEED, Config
from micrec_core.dataset import PairData, dataset_sha256
from micrec_core.losses import TERMS, LossInputs, gather, loss_terms, term_weights
from micrec_core.metrics import ranking_metrics, topk_items
from micrec_core.model import ItemModalities, MICRec, Phase, alpha_at, build_phase
from micrec_core.provenance import code_sha256
from micrec_core.sampling import Triple, TripletSampler

CHECKPOINT = "checkpoint.pt"
GRAD_EVERY = 5  # epochs between two gradient-ratio records in the history
EXPLOSION = 100.0  # a loss term whose size exceeds this factor of its first epoch's (or of 1) has diverged


class TrainingDiverged(RuntimeError):
    """A run's loss went non-finite or exploded: its model is not a trained model and gets no result."""


def pick_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def item_modalities(dataset: Path, domain: str) -> ItemModalities:
    """Load a domain's item features written by `micrec features`."""
    from micrec_core.features import load_features  # the encoders' libraries load only for models that need them

    feats = load_features(dataset, domain)
    return ItemModalities(
        torch.as_tensor(feats.text), torch.as_tensor(feats.text_mask),
        torch.as_tensor(feats.image), torch.as_tensor(feats.image_mask),
    )


def ablate(feats: ItemModalities, config: Config) -> ItemModalities:
    """Drop the modality an ablation removes (no-vis: images, no-txt: text) by clearing its mask."""
    return ItemModalities(
        feats.text, feats.text_mask & config.use_text, feats.image, feats.image_mask & config.use_image
    )


@dataclass
class Setup:
    """A model with the phases and samplers of one pair, ready to train or evaluate."""

    config: Config
    pair: PairData
    device: torch.device
    model: MICRec
    train_phases: list[Phase]
    bpr_samplers: list[TripletSampler]
    se_samplers: list[TripletSampler | None]
    batch_sizes: list[int]
    tau: float
    features: list[ItemModalities | None]
    overlap: torch.Tensor
    weights: torch.Tensor


def setup(pair: PairData, config: Config, features: list[ItemModalities] | None = None) -> Setup:
    """Seed, build the model (templates from E_tr), the training phases and samplers.

    Item features are read from the dataset (`micrec features`) unless given; only MICRec's aggregation uses them.
    A contrastive config on a pair with fewer than two overlapping users is refused rather than trained without
    L_CL under its name.
    """
    if config.contrastive and len(pair.overlap) < 2:
        raise ValueError(
            f"{pair.path}: the domains share {len(pair.overlap)} seen user(s), and the contrastive loss needs at least "
            "2; train the no-cd ablation (--ablation no-cd) or --gamma-cl 0 to run without it"
        )
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    model = MICRec(pair.domains, config)
    if not config.aggregate:
        features = [None, None]
    else:
        features = [ablate(f, config) for f in features or [item_modalities(pair.path, d.name) for d in pair.domains]]
    phases, bprs, ses, sizes = [], [], [], []
    for data, domain_model, feats in zip(pair.domains, model.domains, features, strict=True):
        train = data.edges["train"]
        templates = domain_model.templates
        phases.append(
            build_phase(data, train, templates, feats, config, data.user_seen, data.item_seen).to(device)
        )
        bprs.append(TripletSampler(train, data.n_items, torch.nonzero(data.item_seen).flatten()).to(device))
        sizes.append(math.ceil(train.shape[1] / config.batches_per_epoch))
        if templates is None:
            ses.append(None)
            continue
        tu, ti = templates.user_map[train[0]], templates.item_map[train[1]]
        keep = (tu >= 0) & (ti >= 0)
        template_edges = torch.stack([tu[keep], ti[keep]])
        ses.append(TripletSampler(template_edges, templates.n_items, torch.arange(templates.n_items)).to(device))
    tau = config.temperature((pair.domains[0].name, pair.domains[1].name))
    return Setup(
        config, pair, device, model.to(device), phases, bprs, ses, sizes, tau, features, pair.overlap.to(device),
        term_weights(config).to(device),
    )


@dataclass
class Draws:
    """The randomness of one optimizer step, drawn before any arithmetic so a batched run can replay it.

    Per domain: edge-dropout masks and the raw draws of the BPR and SE batches (`TripletSampler.draw`); then the
    positions in U_o of the overlapping users for L_CL.
    """

    keeps: list[tuple[torch.Tensor | None, torch.Tensor | None]]
    bpr: list[Triple]
    se: list[Triple | None]
    cl_pick: torch.Tensor | None


def has_contrastive(s: Setup) -> bool:
    """Whether the run's steps include L_CL: it is on and at least two overlapping users can be contrasted."""
    return s.config.contrastive and len(s.overlap) > 1


def draw(s: Setup, generator: torch.Generator) -> Draws:
    """Draw a step's randomness from the run's generator, always in the same order."""
    c = s.config
    keeps, bpr, se = [], [], []
    for d, domain in enumerate(s.model.domains):
        keeps.append(domain.dropout_masks(s.train_phases[d], c.dropout, generator))
        bpr.append(s.bpr_samplers[d].draw(s.batch_sizes[d], generator))
        sampler = s.se_samplers[d]
        se.append(sampler.draw(s.batch_sizes[d], generator) if sampler is not None and c.beta_se > 0 else None)
    cl_pick = None
    if has_contrastive(s):
        cl_pick = torch.randperm(len(s.overlap), generator=generator, device=s.device)[: c.cl_users]
    return Draws(keeps, bpr, se, cl_pick)


def step_terms(s: Setup, alpha: float | torch.Tensor, draws: Draws) -> torch.Tensor:
    """The unweighted terms of eq-joint (`losses.TERMS`) for one step's draws, on the plain (one-run) path."""
    c = s.config
    inputs = []
    for d, domain in enumerate(s.model.domains):
        r_users, r_items = domain(s.train_phases[d], c.layers, alpha, c.dropout, draws.keeps[d])
        templates = None if domain.templates is None else (domain.user_templates, domain.item_templates)
        weight = None if domain.templates is None else domain.se_weight
        se = draws.se[d]
        inputs.append(LossInputs(
            r_users, r_items, s.bpr_samplers[d].triples(draws.bpr[d]), templates, weight,
            None if se is None else s.se_samplers[d].triples(se),  # type: ignore[union-attr]
        ))
    cl_users = None
    if draws.cl_pick is not None:
        chosen = s.overlap[draws.cl_pick]
        cl_users = (gather(inputs[0].r_users, chosen[:, 0]), gather(inputs[1].r_users, chosen[:, 1]))
    return loss_terms(c, s.tau, inputs, cl_users, lambda d, r: s.model.projectors[d](r))


def train_step(s: Setup, alpha: float, generator: torch.Generator, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """One optimizer step on eq-joint; returns the step's detached terms (no host synchronisation)."""
    terms = step_terms(s, alpha, draw(s, generator))
    optimizer.zero_grad(set_to_none=True)
    (terms @ s.weights).backward()
    optimizer.step()
    return terms.detach()


def shared_parameters(s: Setup) -> list[torch.Tensor]:
    """The parameters both L_CL and BPR + SE reach: each domain's template embeddings and biases."""
    return [p for name, p in s.model.named_parameters()
            if name.startswith("domains.") and not name.endswith("se_weight")]


def gradient_ratio(s: Setup, alpha: float, epoch: int) -> float | None:
    """||grad of gamma L_CL|| / ||grad of (BPR + beta SE)|| on `shared_parameters`, from one batch drawn with a
    generator of its own (seeded by the run's seed and the epoch: the run's own random stream is not touched).
    None for a run without L_CL. Which term steers the shared parameters, for the history (every GRAD_EVERY)."""
    if not has_contrastive(s):
        return None
    generator = torch.Generator(device=s.device)
    generator.manual_seed((s.config.seed * 1_000_003 + epoch) % MAX_SEED)
    terms = step_terms(s, alpha, draw(s, generator)) * s.weights
    cl_index = TERMS.index("cl")
    params = shared_parameters(s)
    ranking = torch.autograd.grad(terms.sum() - terms[cl_index], params, retain_graph=True, allow_unused=True)
    contrastive = torch.autograd.grad(terms[cl_index], params, allow_unused=True)

    def norm(grads: tuple[torch.Tensor | None, ...]) -> float:
        return float(torch.stack([g.pow(2).sum() for g in grads if g is not None]).sum().sqrt())

    below = norm(ranking)
    return norm(contrastive) / below if below > 0 else math.inf


@torch.no_grad()
def validate(s: Setup, alpha: float) -> list[float]:
    """Validation NDCG@val_n per domain: seen users ranked over seen items, E_tr masked, targets E_val."""
    s.model.eval()
    scores_out = []
    for d, (data, domain) in enumerate(zip(s.pair.domains, s.model.domains, strict=True)):
        r_users, r_items = domain(s.train_phases[d], s.config.layers, alpha)
        scores = r_users @ r_items.T
        scores[:, ~data.item_seen.to(s.device)] = -torch.inf
        train = data.edges["train"].to(s.device)
        top = topk_items(scores, train[0], train[1], s.config.val_n, inplace=True)
        val = data.edges["val"].to(s.device)
        result = ranking_metrics(top, val[0], val[1], data.n_items, ns=(s.config.val_n,))
        scores_out.append(result[f"ndcg@{s.config.val_n}"])
    s.model.train()
    return scores_out


def _groups(config: Config) -> list[list[int]]:
    """Domains that share one early-stopping criterion: both for `best_epoch="joint"`, else each alone."""
    return [[0, 1]] if config.best_epoch == "joint" else [[0], [1]]


def _params_of(model: MICRec, group: list[int], coupled: bool) -> dict[str, torch.Tensor]:
    """A copy of the parameters that belong to a stopping group."""
    prefixes = tuple(f"domains.{d}." for d in group) + (("projectors.",) if coupled else ())
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(prefixes)}


@dataclass
class TrainState:
    """Everything that must survive a restart: saved in every checkpoint (as a plain dict)."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_score: list[float] = field(default_factory=list)
    best_epoch: list[int] = field(default_factory=list)
    best_params: list[dict[str, torch.Tensor]] = field(default_factory=list)
    best_alpha: list[float] = field(default_factory=list)
    train_seconds: float = 0.0


@dataclass
class Run:
    """A training run in progress: its setup, optimizer, RNG, state, checkpoint file and epoch callback.

    failed: why the run diverged (`TrainingDiverged`), once it has; it then trains no further and gets no result.
    """

    s: Setup
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    state: TrainState
    checkpoint: Path | None
    on_epoch: Callable[[dict[str, Any]], None] | None
    checkpoint_every: float = 0.0
    saved_at: float = field(default_factory=time.perf_counter)
    out_of_time: bool = False
    failed: str | None = None

    @property
    def done(self) -> bool:
        """Whether max_epochs is reached, every stopping group ran out of patience, the wall deadline passed, or
        the run diverged."""
        c, state = self.s.config, self.state
        return (state.epoch >= c.max_epochs or _exhausted(state.epoch, state.best_epoch, c.patience)
                or self.out_of_time or self.failed is not None)


def start_run(
    s: Setup, run_dir: Path | None, resume: bool, on_epoch: Callable[[dict[str, Any]], None] | None,
    checkpoint_every: float = 0.0,
) -> Run:
    """Optimizer, generator seeded by config.seed and a fresh state, or all three from the run's checkpoint.

    A checkpoint is written after an epoch once `checkpoint_every` seconds have passed since the last one (0:
    every epoch), and after the last epoch; a resumed run repeats at most that much work, to the same result.
    """
    c = s.config
    optimizer = torch.optim.Adam(s.model.parameters(), lr=c.lr, fused=True)
    generator = torch.Generator(device=s.device)
    generator.manual_seed(c.seed)
    groups = _groups(c)
    state = TrainState(best_score=[-math.inf] * len(groups), best_epoch=[-1] * len(groups))
    state.best_params = [{} for _ in groups]
    state.best_alpha = [alpha_at(0)] * len(groups)
    checkpoint = None if run_dir is None else Path(run_dir) / CHECKPOINT
    if resume and checkpoint is not None and checkpoint.is_file():
        state = _load_checkpoint(checkpoint, s, optimizer, generator)
    s.model.train()
    return Run(s, optimizer, generator, state, checkpoint, on_epoch, checkpoint_every)


def term_names(s: Setup) -> dict[int, str]:
    """History keys of the `losses.TERMS` this run uses, by index: loss/bpr/<domain>, loss/se/<domain> (template
    models with beta > 0), loss/cl (runs with L_CL), loss/l2 (l2 > 0)."""
    names, c = [d.name for d in s.pair.domains], s.config
    used = [True, True, *(s.se_samplers[d] is not None and c.beta_se > 0 for d in range(2)), has_contrastive(s),
            c.l2 > 0]
    keys = [f"loss/{t.split('/')[0]}/{names[int(t[-1])]}" if "/" in t else f"loss/{t}" for t in TERMS]
    return {k: key for k, (key, on) in enumerate(zip(keys, used, strict=True)) if on}


def divergence(history: list[dict[str, Any]], record: dict[str, Any], bounded: set[str]) -> str | None:
    """Why an epoch's record shows a diverged run: a non-finite loss, or an unbounded term (not in `bounded`) whose
    size exceeds EXPLOSION times its first epoch's (or EXPLOSION, for a term that started below 1); None if healthy.
    """
    first = history[0] if history else record
    for key, value in record.items():
        if not key.startswith("loss"):
            continue
        if not math.isfinite(value):
            return f"{key} is {value} at epoch {record['epoch']}"
        if key == "loss" or key in bounded:
            continue
        if abs(value) > EXPLOSION * max(abs(first[key]), 1.0):
            return (f"{key} reached {value:.4g} at epoch {record['epoch']}, over {EXPLOSION:g} times its first "
                    f"epoch's {first[key]:.4g}")
    return None


def end_epoch(
    run: Run, alpha: float, terms: list[torch.Tensor], started: float, late: bool = False,
    val: list[float] | None = None,
) -> None:
    """Record the epoch's loss terms, stop a diverged run, validate, keep each stopping group's best weights,
    checkpoint, call back.

    terms: each step's `losses.TERMS` (unweighted). late: the wall deadline has passed, so this is the run's last
    epoch (checkpointed like any last epoch). val: the run's `validate` result when already computed (runs trained
    together validate at once).
    """
    s, state, c = run.s, run.state, run.s.config
    means = torch.stack(terms).mean(0)
    record: dict[str, Any] = {"epoch": state.epoch, "loss": float(means @ s.weights), "alpha": alpha}
    record |= {key: float(means[k]) for k, key in term_names(s).items()}
    state.train_seconds += time.perf_counter() - started
    run.failed = divergence(state.history, record, {"loss/cl"} if c.cl_normalize else set())
    if run.failed is not None:
        run.failed = f"training diverged: {run.failed} (config {c.model}, ablation {c.ablation}, seed {c.seed})"
        return
    if state.epoch % GRAD_EVERY == 0 and (ratio := gradient_ratio(s, alpha, state.epoch)) is not None:
        record["grad_ratio"] = ratio
    val = validate(s, alpha) if val is None else val
    groups = _groups(c)
    for g, group in enumerate(groups):
        score = sum(val[d] for d in group) / len(group)
        if score > state.best_score[g]:
            state.best_score[g], state.best_epoch[g] = score, state.epoch
            state.best_params[g] = _params_of(s.model, group, len(groups) == 1)
            state.best_alpha[g] = alpha
    record |= {f"val_ndcg@{c.val_n}/{d.name}": v for d, v in zip(s.pair.domains, val, strict=True)}
    state.history.append(record)
    state.epoch += 1
    run.out_of_time = late
    if run.checkpoint is not None and (time.perf_counter() - run.saved_at >= run.checkpoint_every or run.done):
        _save_checkpoint(run.checkpoint, s, run.optimizer, run.generator, state)
        run.saved_at = time.perf_counter()
    if run.on_epoch is not None:
        run.on_epoch(record)


def train(
    s: Setup,
    run_dir: Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    deadline: float | None = None,
) -> TrainState:
    """Train to early stop (or max_epochs), checkpointing every epoch; restores the best weights at the end.

    deadline: a `time.time()` after which no further epoch starts (the run then keeps its best epoch so far).
    Raises `TrainingDiverged` when the loss goes non-finite or explodes.
    """
    run = start_run(s, run_dir, resume, on_epoch)
    while not run.done:
        started = time.perf_counter()
        alpha = alpha_at(run.state.epoch)
        terms = [train_step(s, alpha, run.generator, run.optimizer) for _ in range(s.config.batches_per_epoch)]
        end_epoch(run, alpha, terms, started, past(deadline))
    if run.failed is not None:
        raise TrainingDiverged(run.failed)
    restore_best(s, run.state)
    return run.state


def past(deadline: float | None) -> bool:
    """Whether a wall-clock deadline (`time.time()` seconds) is set and has passed."""
    return deadline is not None and time.time() >= deadline


def _exhausted(epochs_run: int, best_epochs: list[int], patience: int) -> bool:
    """True once every stopping group has gone `patience` epochs without improving."""
    return all(epochs_run - (best + 1) >= patience for best in best_epochs)


def stop_reason(epochs_run: int, best_epochs: list[int], max_epochs: int, patience: int) -> str:
    """Why a finished run stopped: 'early stop' (patience ran out), 'max_epochs', or 'time budget' (a deadline)."""
    if _exhausted(epochs_run, best_epochs, patience):
        return "early stop"
    return "max_epochs" if epochs_run >= max_epochs else "time budget"


def restore_best(s: Setup, state: TrainState) -> None:
    """Load each stopping group's best parameters into the model."""
    current = s.model.state_dict()
    for params in state.best_params:
        current.update(params)
    s.model.load_state_dict(current)


def domain_alphas(s: Setup, state: TrainState) -> list[float]:
    """The alpha each domain's best epoch used (alpha is part of the learned representation)."""
    groups = _groups(s.config)
    return [state.best_alpha[next(g for g, group in enumerate(groups) if d in group)] for d in range(2)]


def _save_checkpoint(
    path: Path, s: Setup, optimizer: torch.optim.Optimizer, generator: torch.Generator, state: TrainState
) -> None:
    """Write model, optimizer, RNG and training state atomically, as plain tensors, numbers and strings."""
    payload = {
        "config": s.config.to_dict(),
        "origin": _origin(s),
        "model": s.model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "state": asdict(state),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _origin(s: Setup) -> dict[str, str | None]:
    """The data and code a checkpoint's weights come from: resuming across either would mix two runs."""
    return {"dataset_sha256": dataset_sha256(s.pair.path), "code_sha256": code_sha256()}


def _load_checkpoint(
    path: Path, s: Setup, optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> TrainState:
    """Restore a checkpoint written by `_save_checkpoint`; config, data and code must match the run's."""
    try:
        payload = torch.load(path, map_location=s.device, weights_only=True)
    except Exception as err:  # an unpickler refusal, a truncated file: either way this checkpoint cannot be used
        raise ValueError(f"{path}: not a checkpoint this version can read ({err}); remove it to retrain") from err
    saved = Config.from_dict(payload["config"]).to_dict()
    differing = sorted(k for k, v in s.config.to_dict().items() if saved.get(k) != v and k != "max_epochs")
    differing += sorted(k for k, v in _origin(s).items() if payload.get("origin", {}).get(k) != v)
    if differing:
        raise ValueError(
            f"{path}: checkpoint was written with a different {', '.join(differing)}; "
            "remove it or train into another folder"
        )
    s.model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    generator.set_state(payload["generator"].cpu())  # map_location moved the CPU byte state to the device
    return TrainState(**copy.deepcopy(payload["state"]))

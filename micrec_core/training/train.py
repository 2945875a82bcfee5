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
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from micrec_core.config import MAX_SEED, Config
from micrec_core.data.atomic import atomic_path
from micrec_core.data.dataset import code_version, dataset_sha256
from micrec_core.evaluation.metrics import Rows, block_users, ranking_metrics, score_rows, topk_blocked
from micrec_core.models.micrec import alpha_at
from micrec_core.models.recommender import Recommender
from micrec_core.models.setup import Setup
from micrec_core.training.memory import retain_freed_memory
from micrec_core.training.provenance import code_sha256, device_name

CHECKPOINT = "checkpoint.pt"
GRAD_EVERY = 5  # epochs between two gradient-ratio records in the history
REPLAY_TOLERANCE = 1e-6  # validation NDCG a resumed checkpoint must reproduce under new code
CODE_HINT = ("continue it under this code with --resume-across-code, which records both code versions in the run, "
             "or remove it to retrain")
EXPLOSION = 100.0  # a loss term whose size exceeds this factor of its first epoch's (or of 1) has diverged
START = "start/"  # the first epoch's record also holds each term at the run's first step, before any update


class TrainingDiverged(RuntimeError):
    """A run's loss went non-finite or exploded: its model is not a trained model and gets no result."""


def train_step(s: Setup, alpha: float, generator: torch.Generator, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """One optimizer step on the model's loss; returns the step's detached terms (no host synchronisation)."""
    terms = s.model.loss_terms(s.model.draw(generator), alpha)
    optimizer.zero_grad(set_to_none=True)
    (terms @ s.model.term_weights()).backward()
    optimizer.step()
    return terms.detach()


def gradient_ratio(s: Setup, alpha: float, epoch: int) -> float | None:
    """||grad of the auxiliary terms|| / ||grad of the others|| (weighted as in the loss; for MICRec gamma L_CL
    against BPR + beta SE) on the parameters both reach, from one batch drawn with a generator of its own (seeded by
    the run's seed and the epoch: the run's own random stream is not touched). None for a model without auxiliary
    terms. Which term steers the shared parameters, for the history (every GRAD_EVERY epochs)."""
    auxiliary = s.model.auxiliary_terms()
    if not auxiliary:
        return None
    generator = torch.Generator(device=s.device)
    generator.manual_seed((s.config.seed * 1_000_003 + epoch) % MAX_SEED)
    terms = s.model.loss_terms(s.model.draw(generator), alpha) * s.model.term_weights()
    params = [p for p in s.model.parameters() if p.requires_grad]
    side = terms[auxiliary].sum()
    main = torch.autograd.grad(terms.sum() - side, params, retain_graph=True, allow_unused=True)
    aux = torch.autograd.grad(side, params, allow_unused=True)
    # reached by both: a term stacked with the others gives a parameter it does not reach an exact zero, not None
    shared = [(m, a) for m, a in zip(main, aux, strict=True)
              if m is not None and a is not None and bool(m.any()) and bool(a.any())]

    def norm(grads: list[torch.Tensor]) -> float:
        return float(torch.stack([g.pow(2).sum() for g in grads]).sum().sqrt())

    below = norm([m for m, _ in shared]) if shared else 0.0
    return norm([a for _, a in shared]) / below if below > 0 else None  # undefined: no shared gradient to compare


@torch.no_grad()
def validate(s: Setup, alpha: float) -> list[float]:
    """Validation NDCG@val_n per domain: seen users ranked over seen items, E_tr masked, targets E_val."""
    s.model.eval()
    scores_out = []
    for d, data in enumerate(s.pair.domains):
        factors = s.model.validation_factors(d, alpha)
        rows = score_rows(factors if factors is not None else s.model.validation_scores(d, alpha))
        unseen = ~data.item_seen.to(s.device)

        def masked(a: int, b: int, rows: Rows = rows, unseen: torch.Tensor = unseen) -> torch.Tensor:
            block = rows(a, b)
            block[:, unseen] = -torch.inf
            return block

        train = data.edges["train"].to(s.device)
        top = topk_blocked(masked, data.n_users, data.n_items, train[0], train[1], s.config.val_n,
                           block_users(data.n_items))
        val = data.edges["val"].to(s.device)
        result = ranking_metrics(top, val[0], val[1], data.n_items, ns=(s.config.val_n,))
        scores_out.append(result[f"ndcg@{s.config.val_n}"])
    s.model.train()
    return scores_out


def _groups(config: Config) -> list[list[int]]:
    """Domains that share one early-stopping criterion: both for `best_epoch="joint"`, else each alone."""
    return [[0, 1]] if config.best_epoch == "joint" else [[0], [1]]


def _params_of(model: Recommender, group: list[int], coupled: bool) -> dict[str, torch.Tensor]:
    """A copy of the parameters that belong to a stopping group: its domains' own, and (one group for both
    domains) every parameter of no domain."""
    own = tuple(model.domain_prefix(d) for d in group)
    others = tuple(model.domain_prefix(d) for d in range(2) if d not in group)
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if k.startswith(own) or (coupled and not k.startswith(others))}


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
    code_history: list[dict[str, Any]] = field(default_factory=list)


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
    checkpoint_every: float = 0.0, across_code: bool = False,
) -> Run:
    """Optimizer, generator seeded by config.seed and a fresh state, or all three from the run's checkpoint.

    A checkpoint is written after an epoch once `checkpoint_every` seconds have passed since the last one (0:
    every epoch), and after the last epoch; a resumed run repeats at most that much work, to the same result.
    across_code: continue a checkpoint written by other code (`_load_checkpoint`). On a CPU, the process keeps
    the memory its steps free for reuse (`memory.retain_freed_memory`).
    """
    c = s.config
    if s.device.type == "cpu":
        retain_freed_memory()
    optimizer = torch.optim.Adam(s.model.parameters(), lr=c.lr, fused=True)
    generator = torch.Generator(device=s.device)
    generator.manual_seed(c.seed)
    groups = _groups(c)
    state = TrainState(best_score=[-math.inf] * len(groups), best_epoch=[-1] * len(groups))
    state.best_params = [{} for _ in groups]
    state.best_alpha = [alpha_at(0)] * len(groups)
    state.code_history = [code_segment(0, s.device)]
    checkpoint = None if run_dir is None else Path(run_dir) / CHECKPOINT
    if resume and checkpoint is not None and checkpoint.is_file():
        state = _load_checkpoint(checkpoint, s, optimizer, generator, across_code)
    s.model.train()
    return Run(s, optimizer, generator, state, checkpoint, on_epoch, checkpoint_every)


def term_names(s: Setup) -> dict[int, str]:
    """History keys of the model's loss terms this run uses, by index: loss/<term>/<domain> for a per-domain term
    (e.g. loss/bpr/Beauty), loss/<term> otherwise (e.g. loss/cl)."""
    names = [d.name for d in s.pair.domains]
    keys = [f"loss/{t.split('/')[0]}/{names[int(t[-1])]}" if "/" in t else f"loss/{t}" for t in s.model.terms]
    return {k: key for k, (key, on) in enumerate(zip(keys, s.model.used_terms(), strict=True)) if on}


def divergence(history: list[dict[str, Any]], record: dict[str, Any], bounded: set[str]) -> str | None:
    """Why an epoch's record shows a diverged run: a non-finite loss, or an unbounded term (not in `bounded`) whose
    size exceeds EXPLOSION times its first epoch's mean (or EXPLOSION, for a term that started below 1); None if
    healthy. The first epoch is measured against the run's first step (`start/<term>` in its record: the loss at
    initialisation), so a run that explodes within its first epoch is caught too.
    """
    for key, value in record.items():
        if not key.startswith("loss"):
            continue
        if not math.isfinite(value):
            return f"{key} is {value} at epoch {record['epoch']}"
        if key == "loss" or key in bounded:
            continue
        reference, since = (history[0][key], "first epoch's") if history else (record[START + key], "first step's")
        if abs(value) > EXPLOSION * max(abs(reference), 1.0):
            return (f"{key} reached {value:.4g} at epoch {record['epoch']}, over {EXPLOSION:g} times its {since} "
                    f"{reference:.4g}")
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
    record: dict[str, Any] = {"epoch": state.epoch, "loss": float(means @ s.model.term_weights()), "alpha": alpha}
    names = term_names(s)
    record |= {key: float(means[k]) for k, key in names.items()}
    if not state.history:
        record |= {START + key: float(terms[0][k]) for k, key in names.items()}
    state.train_seconds += time.perf_counter() - started
    run.failed = divergence(state.history, record, {names[k] for k in s.model.bounded_terms() if k in names})
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
    across_code: bool = False,
) -> TrainState:
    """Train to early stop (or max_epochs), checkpointing every epoch; restores the best weights at the end.

    deadline: a `time.time()` after which no further epoch starts (the run then keeps its best epoch so far).
    across_code: resume a checkpoint written by other code (`_load_checkpoint`).
    Raises `TrainingDiverged` when the loss goes non-finite or explodes.
    """
    run = start_run(s, run_dir, resume, on_epoch, across_code=across_code)
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


def code_segment(epoch: int, device: torch.device) -> dict[str, Any]:
    """An entry of `TrainState.code_history`: the code (package sha256, git commit) and the device (`device_name`)
    that train from `epoch` on."""
    return {"from_epoch": epoch, "code_sha256": code_sha256(), "git_commit": code_version()["git_commit"],
            "device": device_name(device)}


def _legacy_code_history(path: Path, code: str | None) -> list[dict[str, Any]]:
    """The code history of a checkpoint written before runs kept one: its code from epoch 0, with the git commit
    of the metrics.json beside it when that file was written by the same code."""
    metrics = path.parent / "metrics.json"
    provenance = json.loads(metrics.read_text())["provenance"] if metrics.is_file() else {}
    commit = provenance.get("git_commit") if provenance.get("code_sha256") == code else None
    return [{"from_epoch": 0, "code_sha256": code, "git_commit": commit}]


def read_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint's payload (`_save_checkpoint`); one that cannot be read is a ValueError naming it."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # an unpickler refusal, a truncated file: either way this checkpoint cannot be used
        raise ValueError(f"{path}: not a checkpoint this version can read ({err}); remove it to retrain") from err


def written_by_other_code(folder: Path, payload: dict[str, Any], across_code: bool) -> bool:
    """Whether a run folder's checkpoint (its payload) was written by other code than this; a ValueError saying how
    to go on unless `across_code`."""
    code = payload.get("origin", {}).get("code_sha256")
    if code == code_sha256():
        return False
    if not across_code:
        raise ValueError(f"{folder}: its checkpoint (epoch {payload['state']['epoch']}) was written by other code "
                         f"({str(code)[:12]} there, {code_sha256()[:12]} here), a different code_sha256 ({CODE_HINT})")
    return True


def _load_checkpoint(
    path: Path, s: Setup, optimizer: torch.optim.Optimizer, generator: torch.Generator, across_code: bool = False
) -> TrainState:
    """Restore a checkpoint written by `_save_checkpoint`; config and data must match the run's, and so must the
    code unless `across_code`.

    Across a code change the checkpoint's model is first validated by this code, which must reproduce the
    validation NDCG its last epoch recorded (REPLAY_TOLERANCE): a change to how the model represents or scores is
    refused; one to how it trains is not detectable so, which is why continuing is opt-in. The new code's
    segment is appended to the run's `code_history` (metrics.json's provenance), so the result says that two
    versions trained it. So is one on another device (or one a checkpoint written before segments named theirs
    does not name): the same code and seed round differently on another CPU (`provenance` module).
    """
    payload = read_checkpoint(path, s.device)
    saved = Config.from_dict(payload["config"]).to_dict()
    differing = sorted(k for k, v in s.config.to_dict().items() if saved.get(k) != v and k != "max_epochs")
    origin = payload.get("origin", {})
    differing += sorted(k for k, v in _origin(s).items() if origin.get(k) != v and k != "code_sha256")
    if differing:
        raise ValueError(
            f"{path}: checkpoint was written with a different {', '.join(differing)}; "
            "remove it or train into another folder"
        )
    other_code = written_by_other_code(path.parent, payload, across_code)
    s.model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    generator.set_state(payload["generator"].cpu())  # map_location moved the CPU byte state to the device
    state = TrainState(**copy.deepcopy(payload["state"]))
    if not state.code_history:
        state.code_history = _legacy_code_history(path, origin.get("code_sha256"))
    if other_code:
        _replay_validation(path, s, state)
    if other_code or state.code_history[-1].get("device") != device_name(s.device):
        state.code_history.append(code_segment(state.epoch, s.device))  # another machine may round otherwise
    return state


def _replay_validation(path: Path, s: Setup, state: TrainState) -> None:
    """Validate the checkpoint's model with this code; refuse when it does not reproduce the recorded NDCG."""
    last = state.history[-1]
    recorded = [last[f"val_ndcg@{s.config.val_n}/{d.name}"] for d in s.pair.domains]
    replayed = validate(s, last["alpha"])
    if any(abs(a - b) > REPLAY_TOLERANCE for a, b in zip(recorded, replayed, strict=True)):
        raise ValueError(
            f"{path}: this code validates the checkpoint's model (epoch {last['epoch']}) at NDCG@{s.config.val_n} "
            f"{[round(v, 6) for v in replayed]}, not the {[round(v, 6) for v in recorded]} recorded: the code change "
            "alters the model; remove the checkpoint to retrain"
        )

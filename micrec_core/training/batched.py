"""Several training runs as one model: the fast path for small graphs (issue #5).

On datasets of this size a step is a few hundred tiny kernels, so a GPU waits on kernel launches, not arithmetic.
The runs of one pair (every seed of MICRec, its ablations and INMO; or LightGCN's seeds) share their graphs, so
this module trains them together: the 2K domain graphs of K runs become one disjoint-union graph, Eq. 1-2, Eq. 5
and the propagation run once over it (`template_product` and `finish` of the plain model, unchanged), and the
plain `joint_loss` is evaluated for all runs at once (its inputs carry a leading run dimension). Each run keeps its
own parameters, Adam state, random generator (drawn in the plain order by `draw`), early stopping and
checkpoint, so a run trained here computes the same function as `train.train` alone, up to float rounding
(the tolerances below; tests/test_batched.py and bench/check_fast_path.py compare the two).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from micrec_core.config import Config
from micrec_core.evaluation.metrics import ranking_metrics, topk_items
from micrec_core.models.losses import LossInputs, gather, loss_terms
from micrec_core.models.micrec import Draws, Phase, alpha_at, finish
from micrec_core.models.sampling import Triple
from micrec_core.models.setup import Setup
from micrec_core.models.sparse import SparseMatrix
from micrec_core.models.templates import template_product
from micrec_core.training.train import Run, TrainingDiverged, TrainState, end_epoch, past, restore_best, start_run

# How close a run trained together stays to the same run alone. Losses and scores differ by float rounding only
# (batched kernels sum in another order, and Adam magnifies rounding in near-zero gradients), ranking metrics by
# the rare pair of items whose order such a difference flips.
LOSS_RTOL, SCORE_RTOL, RANKING_ATOL = 1e-3, 1e-3, 0.01
SCORE_BLOCK = 2**27  # validation scores of several runs computed at once (512 MB of float32)


def _offsets(sizes: Sequence[int]) -> list[int]:
    """Where each block starts when blocks of these sizes are stacked."""
    return [sum(sizes[:b]) for b in range(len(sizes))]


def _block_diagonal(mats: Sequence[SparseMatrix]) -> SparseMatrix:
    """diag(M_1, ..., M_n): each row keeps its entries in the same order, so row sums are unchanged."""
    row_at = _offsets([m.shape[0] for m in mats])
    col_at = _offsets([m.shape[1] for m in mats])
    rows = torch.cat([m.pattern.rows + r for m, r in zip(mats, row_at, strict=True)])
    cols = torch.cat([m.pattern.cols + c for m, c in zip(mats, col_at, strict=True)])
    shape = (sum(m.shape[0] for m in mats), sum(m.shape[1] for m in mats))
    return SparseMatrix.from_coo(rows, cols, torch.cat([m.values for m in mats]), shape)


def _union_adjacency(phases: Sequence[Phase]) -> SparseMatrix:
    """The blocks' graphs as one, nodes ordered [users of every block; items of every block]."""
    user_at = _offsets([p.n_users for p in phases])
    item_at = [sum(p.n_users for p in phases) + o for o in _offsets([p.n_items for p in phases])]
    blocks = list(zip(phases, user_at, item_at, strict=True))
    rows = [_relabel(p.adjacency.pattern.rows, p.n_users, u0, i0) for p, u0, i0 in blocks]
    cols = [_relabel(p.adjacency.pattern.cols, p.n_users, u0, i0) for p, u0, i0 in blocks]
    n = sum(p.n_users + p.n_items for p in phases)
    return SparseMatrix.from_coo(torch.cat(rows), torch.cat(cols), torch.cat([p.adjacency.values for p in phases]),
                                 (n, n))


def _relabel(nodes: torch.Tensor, n_users: int, user_at: int, item_at: int) -> torch.Tensor:
    """A block's node ids (users, then items) in the union's order."""
    return torch.where(nodes < n_users, nodes + user_at, nodes - n_users + item_at)


def _union_neighbours(
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor] | None], sizes: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Eq. 5 neighbour lists of every block, indices shifted to the block's rows.

    A block without aggregation (no-mm, INMO) gets K invalid neighbours: Eq. 5 then adds exactly zero.
    """
    given = [p for p in pairs if p is not None]
    if not given:
        return None
    k, device = given[0][0].shape[1], given[0][0].device
    full = [p if p is not None else (torch.zeros(n, k, dtype=torch.long, device=device),
                                     torch.zeros(n, k, dtype=torch.bool, device=device))
            for p, n in zip(pairs, sizes, strict=True)]
    return (
        torch.cat([idx.clamp(min=0) + o for (idx, _), o in zip(full, _offsets(sizes), strict=True)]),
        torch.cat([valid for _, valid in full]),
    )


def union_phase(phases: Sequence[Phase]) -> Phase:
    """One Phase holding every block's graph, template connections and neighbours as disjoint parts."""
    users = [p.n_users for p in phases]
    items = [p.n_items for p in phases]
    with_templates = phases[0].user_conn is not None
    return Phase(
        sum(users), sum(items), _union_adjacency(phases),
        _block_diagonal([p.user_conn for p in phases]) if with_templates else None,  # type: ignore[misc]
        _block_diagonal([p.item_conn for p in phases]) if with_templates else None,  # type: ignore[misc]
        _union_neighbours([p.user_neighbours for p in phases], users),
        _union_neighbours([p.item_neighbours for p in phases], items),
    )


PER_RUN = ("seed", "model", "ablation", "se_weight", "best_epoch")


def union_key(config: Config) -> tuple[Any, ...]:
    """Runs with equal keys can train as one union: they may differ in seed and in variant among MICRec, its
    ablations and INMO (what aggregation, L_CL and W each uses is per run), never in any other setting."""
    values = config.to_dict()
    return (values["model"] == "lightgcn", *sorted((k, str(v)) for k, v in values.items() if k not in PER_RUN))


@dataclass
class Together:
    """Runs trained as one: their setups (one pair, `union_key`-equal configs) and the union of their graphs.

    Blocks are ordered run by run, domain 0 then 1; `*_at[d]` hold each run's row offset of domain d ([K, 1]).
    `coupled` lists the runs with L_CL (`cl_runs` on the device, `cl_user_at` their user offsets), fixed per union
    so that a step does no host-to-device copy.
    """

    runs: list[Run]
    phase: Phase
    user_at: list[torch.Tensor]
    item_at: list[torch.Tensor]
    item_template_at: list[torch.Tensor]
    user_template_at: list[torch.Tensor]
    coupled: list[int]
    cl_runs: torch.Tensor
    cl_user_at: list[torch.Tensor]
    captured: Captured | None = None

    @classmethod
    def of(cls, runs: list[Run]) -> Together:
        """Stack `runs` (one pair; configs with equal `union_key`)."""
        first = runs[0].s.config
        for run in runs[1:]:
            if union_key(run.s.config) != union_key(first) or run.s.pair.path != runs[0].s.pair.path:
                differing = sorted(k for k, v in run.s.config.to_dict().items()
                                   if k not in PER_RUN and first.to_dict()[k] != v)
                raise ValueError(
                    "runs trained together may differ only in seed and variant (MICRec, its ablations, INMO); "
                    f"they differ in {differing or 'data or model family'}"
                )
        phases = [p for run in runs for p in run.s.model.train_phases]
        device = runs[0].s.device

        def per_domain(sizes: list[int]) -> list[torch.Tensor]:
            at = torch.tensor(_offsets(sizes), device=device).view(len(runs), 2)
            return [at[:, d : d + 1] for d in range(2)]

        with_templates = phases[0].user_conn is not None
        user_at = per_domain([p.n_users for p in phases])
        coupled = [k for k, run in enumerate(runs) if run.s.model.coupled]
        cl_runs = torch.tensor(coupled, dtype=torch.long, device=device)
        return cls(
            runs, union_phase(phases), user_at, per_domain([p.n_items for p in phases]),
            per_domain([p.user_conn.shape[1] for p in phases]) if with_templates else [],  # type: ignore[union-attr]
            per_domain([p.item_conn.shape[1] for p in phases]) if with_templates else [],  # type: ignore[union-attr]
            coupled, cl_runs, [at[cl_runs] for at in user_at],
        )

    def representations(
        self, alpha: float | torch.Tensor, draws: list[Draws] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Every run's training r_u and r_i (union rows), and the [templates; bias] rows of Eq. 1-2 (users, items).

        draws: each run's step draws, whose edge-dropout masks apply; None = no dropout (validation).
        """
        setups = [run.s for run in self.runs]
        c = setups[0].config
        blocks = [(s.model.domains[d], s.model.train_phases[d]) for s in setups for d in range(2)]
        if self.phase.user_conn is None or self.phase.item_conn is None:
            initial = [model.initial(phase, alpha) for model, phase in blocks]
            x_users, x_items = torch.cat([x for x, _ in initial]), torch.cat([x for _, x in initial])
            template_rows = None
        else:
            keeps = [(None, None)] if draws is None else [k for dr in draws for k in dr.keeps]
            user_keep = None if keeps[0][0] is None else torch.cat([k[0] for k in keeps])  # type: ignore[misc]
            item_keep = None if keeps[0][1] is None else torch.cat([k[1] for k in keeps])  # type: ignore[misc]
            item_rows = torch.cat([t for m, _ in blocks for t in (m.item_templates, m.user_bias[None])])
            user_rows = torch.cat([t for m, _ in blocks for t in (m.user_templates, m.item_bias[None])])
            x_users = template_product(self.phase.user_conn, item_rows, alpha, c.dropout, user_keep)
            x_items = template_product(self.phase.item_conn, user_rows, alpha, c.dropout, item_keep)
            template_rows = (user_rows, item_rows)
        r_users, r_items = finish(self.phase, x_users, x_items, c.layers)
        return r_users, r_items, template_rows

    def losses(self, alpha: float | torch.Tensor, draws: list[Draws]) -> torch.Tensor:
        """Every run's loss terms ([K, len(TERMS)]): the plain `loss_terms` on all runs' draws mapped at once into
        union rows."""
        s = self.runs[0].s  # the runs share their samplers' data: same pair, same sampling settings
        r_users, r_items, template_rows = self.representations(alpha, draws)

        def stacked(raws: list[Triple]) -> Triple:
            return tuple(torch.stack(part) for part in zip(*raws, strict=True))  # type: ignore[return-value]

        inputs = []
        for d in range(2):
            users, pos, neg = s.model.bpr_samplers[d].triples(stacked([dr.bpr[d] for dr in draws]))
            bpr = (users + self.user_at[d], pos + self.item_at[d], neg + self.item_at[d])
            se, weight = None, None
            sampler = s.model.se_samplers[d]
            if template_rows is not None and sampler is not None:
                weight = _stacked_weights([run.s.model.domains[d].se_weight for run in self.runs])
                if draws[0].se[d] is not None:
                    tu, ti, tj = sampler.triples(stacked([dr.se[d] for dr in draws]))  # type: ignore[misc]
                    at_users, at_items = self.user_template_at[d], self.item_template_at[d]
                    se = (tu + at_users, ti + at_items, tj + at_items)
            inputs.append(LossInputs(r_users, r_items, bpr, template_rows, weight, se))
        cl_users = None
        if self.coupled:
            chosen = s.model.overlap[torch.stack([draws[k].cl_pick for k in self.coupled])]  # type: ignore[misc]
            cl_users = (gather(r_users, chosen[..., 0] + self.cl_user_at[0]),
                        gather(r_users, chosen[..., 1] + self.cl_user_at[1]))

        def project(d: int, reps: torch.Tensor) -> torch.Tensor:
            return self.project([self.runs[k] for k in self.coupled], d, reps)

        return loss_terms(s.config, s.model.tau, inputs, cl_users, project, self.cl_runs)

    @staticmethod
    def project(runs: list[Run], d: int, reps: torch.Tensor) -> torch.Tensor:
        """Each run's own f^A or f^B on its rows of `reps` ([K, m, dim]), as one vectorised call."""
        modules = [run.s.model.projectors[d] for run in runs]
        names = [name for name, _ in modules[0].named_parameters()]
        params = {name: torch.stack([dict(m.named_parameters())[name] for m in modules]) for name in names}
        return torch.func.vmap(lambda p, x: torch.func.functional_call(modules[0], p, (x,)))(params, reps)

    def step(self, alpha: float | torch.Tensor) -> list[torch.Tensor]:
        """One optimizer step of every run: each run's draws in its own plain order, one backward for all; each
        run's loss terms (detached)."""
        draws = [run.s.model.draw(run.generator) for run in self.runs]
        terms = self.losses(alpha, draws)
        for run in self.runs:
            run.optimizer.zero_grad(set_to_none=True)
        (terms @ self.runs[0].s.model.term_weights()).sum().backward()
        for run in self.runs:
            run.optimizer.step()
        return list(terms.detach().unbind())


@torch.no_grad()
def validate_together(together: Together, alpha: float) -> list[list[float]]:
    """Every run's `train.validate` (validation NDCG@val_n per domain) from one pass over the union graph.

    Per domain, the runs' scores are batched products ranked by one top-k over the runs' stacked rows (E_tr
    masked per run), in blocks of at most SCORE_BLOCK scores; each run's slice of the ranking is then scored
    as in `validate`. The same numbers up to float rounding, with a fraction of the kernel launches.
    """
    s = together.runs[0].s
    c, device, n_runs = s.config, s.device, len(together.runs)
    r_users, r_items, _ = together.representations(alpha)
    out = [[0.0] * len(s.pair.domains) for _ in together.runs]
    for d, data in enumerate(s.pair.domains):
        n_users, n_items = s.model.train_phases[d].n_users, s.model.train_phases[d].n_items
        users = r_users[together.user_at[d] + torch.arange(n_users, device=device)]  # [K, U, dim]
        items = r_items[together.item_at[d] + torch.arange(n_items, device=device)]  # [K, I, dim]
        unseen = ~data.item_seen.to(device)
        train, val = data.edges["train"].to(device), data.edges["val"].to(device)
        per_block = max(1, SCORE_BLOCK // (n_users * n_items))
        for first in range(0, n_runs, per_block):
            block = range(first, min(first + per_block, n_runs))
            scores = torch.bmm(users[block.start : block.stop], items[block.start : block.stop].transpose(1, 2))
            scores[:, :, unseen] = -torch.inf
            shift = (torch.arange(len(block), device=device) * n_users).unsqueeze(1)
            top = topk_items(scores.view(-1, n_items), (train[0] + shift).flatten(), train[1].repeat(len(block)),
                             c.val_n, inplace=True)
            for b, k in enumerate(block):
                result = ranking_metrics(top[b * n_users : (b + 1) * n_users], val[0], val[1], n_items,
                                         ns=(c.val_n,))
                out[k][d] = result[f"ndcg@{c.val_n}"]
    return out


def epoch_steps(together: Together, alpha: float, steps: int, graph: bool = False) -> list[list[torch.Tensor]]:
    """`steps` optimizer steps of every run at one alpha; each step's loss terms per run (still on the device).

    graph: replay the steps from a CUDA graph of one step, captured once per union (`Captured`): the same kernels
    in the same order, each run's generator advanced as the eager step would (every generator is registered with
    the graph), Adam capturable, alpha read from a device scalar set before each epoch. The same function, without
    the per-operation launch cost. CUDA only.
    """
    if not graph:
        return [together.step(alpha) for _ in range(steps)]
    if together.runs[0].s.device.type != "cuda":
        raise ValueError(f"CUDA graphs need a CUDA device, got {together.runs[0].s.device}")
    out: list[list[torch.Tensor]] = []
    if together.captured is None:
        scalar = torch.tensor(alpha, device=together.runs[0].s.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # the first step runs eagerly, on the graph's inputs: it warms up what is lazy
            out.append(together.step(scalar))
        torch.cuda.current_stream().wait_stream(side)
        if steps == 1:
            return out
        together.captured = Captured.of(together, scalar)
    together.captured.alpha.fill_(alpha)
    for _ in range(steps - len(out)):
        together.captured.graph.replay()
        out.append(list(together.captured.losses.clone().unbind()))
    return out


@dataclass
class Captured:
    """One union step captured in a CUDA graph, alpha a device scalar of it; replayed until the union changes."""

    graph: torch.cuda.CUDAGraph
    alpha: torch.Tensor
    losses: torch.Tensor

    @classmethod
    def of(cls, together: Together, alpha: torch.Tensor) -> Captured:
        """Capture one step of `together` (after an eager one on the same inputs), reading alpha from `alpha`."""
        cuda_graph = torch.cuda.CUDAGraph()
        for run in together.runs:
            cuda_graph.register_generator_state(run.generator)
            for group in run.optimizer.param_groups:
                group["capturable"] = True
            run.optimizer.zero_grad(set_to_none=True)  # backward in the capture allocates the graph's own gradients
        with torch.cuda.graph(cuda_graph):
            losses = torch.stack(together.step(alpha))
        return cls(cuda_graph, alpha, losses)


def _stacked_weights(weights: list[torch.Tensor]) -> torch.Tensor:
    """Each run's SE weight as one [K, d, d] tensor (INMO's diagonal w as diag(w): the same scores) or [K, d]."""
    if all(w.dim() == 1 for w in weights):
        return torch.stack(weights)
    return torch.stack([w if w.dim() == 2 else torch.diag(w) for w in weights])


def train_together(
    setups: list[Setup],
    run_dirs: Sequence[Path | None] | None = None,
    resume: bool = False,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
    on_done: Callable[[int, TrainState], None] | None = None,
    checkpoint_every: float = 0.0,
    deadline: float | None = None,
    graph: bool = False,
    on_failed: Callable[[int, str], None] | None = None,
    across_code: bool = False,
) -> list[TrainState]:
    """Train runs with equal union keys as one model, each to its own early stop; their final states.

    Each epoch steps the runs that are furthest behind (after a resume they may be an epoch apart). A run that
    stops leaves the union with its best weights restored, and `on_done(k, state)` is called at once, so a run's
    results can be kept before the others finish. Epoch times are wall times shared by the runs trained together.
    A run that diverges leaves the union with `on_failed(k, reason)` and no result; without `on_failed` it stops
    the whole union (`TrainingDiverged`).
    deadline: a `time.time()` after which no further epoch starts (every run keeps its best epoch so far).
    graph: replay each epoch's steps from a CUDA graph (`epoch_steps`).
    across_code: resume checkpoints written by other code (`train._load_checkpoint`).
    """
    dirs = list(run_dirs) if run_dirs is not None else [None] * len(setups)
    runs = [
        start_run(s, folder, resume, None if on_epoch is None else _callback(on_epoch, k), checkpoint_every,
                  across_code)
        for k, (s, folder) in enumerate(zip(setups, dirs, strict=True))
    ]
    finished: set[int] = set()

    def close_finished() -> None:
        for k, run in enumerate(runs):
            if run.done and k not in finished:
                finished.add(k)
                if run.failed is not None:
                    if on_failed is None:
                        raise TrainingDiverged(run.failed)
                    on_failed(k, run.failed)
                    continue
                restore_best(run.s, run.state)
                if on_done is not None:
                    on_done(k, run.state)

    together: Together | None = None
    close_finished()
    while active := [run for run in runs if not run.done]:
        epoch = min(run.state.epoch for run in active)
        group = [run for run in active if run.state.epoch == epoch]
        if together is None or [id(r) for r in together.runs] != [id(r) for r in group]:
            together = Together.of(group)
        started = time.perf_counter()
        alpha = alpha_at(epoch)
        losses = epoch_steps(together, alpha, setups[0].config.batches_per_epoch, graph)
        val = validate_together(together, alpha)
        late = past(deadline)
        for k, run in enumerate(group):
            end_epoch(run, alpha, [step[k] for step in losses], started, late, val[k])
        for run in active:
            if all(run is not stepped for stepped in group):  # a run an epoch ahead (after a resume) stops too
                run.out_of_time |= late
        close_finished()
    return [run.state for run in runs]


def _callback(on_epoch: Callable[[int, dict[str, Any]], None], k: int) -> Callable[[dict[str, Any]], None]:
    """The epoch callback of run k."""
    return lambda record: on_epoch(k, record)

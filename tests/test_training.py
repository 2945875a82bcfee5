"""Training: determinism, resume, no leakage, gradients, inductive inference, and the CLI's metrics.json."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from micrec_core.config import Config
from micrec_core.data.dataset import PairData
from micrec_core.evaluation.inference import evaluate_test, recommend_new
from micrec_core.models.micrec import ItemModalities
from micrec_core.models.sampling import TripletSampler
from micrec_core.models.setup import setup
from micrec_core.training.provenance import cpu_model, device_name
from micrec_core.training.train import CHECKPOINT, domain_alphas, train, train_step
from tests.conftest import random_features


def quick(model: str = "micrec", **kw: object) -> Config:
    """A config small enough to train in a second."""
    values = {"model": model, "dim": 16, "max_epochs": 3, "batches_per_epoch": 5, "device": "cpu", "cl_users": 16}
    values.update(kw)
    return Config(**values)  # type: ignore[arg-type]


def run(pair: PairData, config: Config, features: list[ItemModalities] | None = None, **kw: object):
    """Train and evaluate; returns (setup, state, test metrics)."""
    s = setup(pair, config, features if features is not None else random_features(pair))
    state = train(s, **kw)  # type: ignore[arg-type]
    return s, state, evaluate_test(s, domain_alphas(s, state))


def test_sampler_never_returns_an_interacted_negative() -> None:
    edges = torch.tensor([[0, 0, 0, 1], [0, 1, 2, 3]])
    sampler = TripletSampler(edges, 5, torch.arange(5))
    users, pos, neg = sampler.sample(500, torch.Generator().manual_seed(0))
    truth = {(0, 0), (0, 1), (0, 2), (1, 3)}
    assert all((u, i) in truth for u, i in zip(users.tolist(), pos.tolist(), strict=True))
    assert not any((u, j) in truth for u, j in zip(users.tolist(), neg.tolist(), strict=True))
    assert set(neg[users == 0].tolist()) == {3, 4}


def test_sampler_negatives_are_uniform_over_the_free_pool_items() -> None:
    edges = torch.tensor([[0, 0, 0, 1, 1], [1, 4, 6, 0, 7]])
    pool = torch.tensor([0, 1, 3, 4, 5, 6, 7])  # item 2 is outside the pool (e.g. unseen)
    users, _, neg = TripletSampler(edges, 8, pool).sample(70_000, torch.Generator().manual_seed(1))
    for user, free in ((0, [0, 3, 5, 7]), (1, [1, 3, 4, 5, 6])):
        counts = torch.bincount(neg[users == user], minlength=8).double()
        assert set(torch.nonzero(counts).flatten().tolist()) == set(free)
        share = counts[free] / counts.sum()
        assert torch.allclose(share, torch.full_like(share, 1 / len(free)), atol=0.01)


def test_sampler_refuses_users_without_negatives() -> None:
    with pytest.raises(ValueError, match="all 2 items"):
        TripletSampler(torch.tensor([[0, 0], [0, 1]]), 2, torch.arange(2))
    with pytest.raises(ValueError, match="negative pool"):
        TripletSampler(torch.tensor([[0], [2]]), 4, torch.tensor([0, 1, 3]))


@pytest.mark.parametrize("model", ["micrec", "inmo", "lightgcn"])
def test_same_seed_same_metrics_on_cpu(tiny_pair: PairData, model: str) -> None:
    _, state1, test1 = run(tiny_pair, quick(model))
    _, state2, test2 = run(tiny_pair, quick(model))
    assert test1 == test2
    assert [h["loss"] for h in state1.history] == [h["loss"] for h in state2.history]
    _, state3, _ = run(tiny_pair, quick(model, seed=1))
    assert [h["loss"] for h in state1.history] != [h["loss"] for h in state3.history]


class Killed(Exception):
    """Raised from the epoch callback to simulate a killed run."""


def test_resume_equals_uninterrupted(tiny_pair: PairData, tmp_path: Path) -> None:
    config = quick(max_epochs=5)
    _, full_state, full_test = run(tiny_pair, config, run_dir=tmp_path / "full")

    def kill_after_two(record: dict) -> None:
        if record["epoch"] == 1:
            raise Killed

    with pytest.raises(Killed):
        run(tiny_pair, config, run_dir=tmp_path / "killed", on_epoch=kill_after_two)
    assert torch.load(tmp_path / "killed" / CHECKPOINT, weights_only=True)["state"]["epoch"] == 2
    _, resumed_state, resumed_test = run(tiny_pair, config, run_dir=tmp_path / "killed", resume=True)
    assert resumed_test == full_test
    assert resumed_state.history == full_state.history
    assert resumed_state.code_history == full_state.code_history  # the same code on the same device: one segment


def test_a_run_resumed_on_another_device_records_it(tiny_pair: PairData, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    config = quick(max_epochs=4)

    def kill_after_two(record: dict) -> None:
        if record["epoch"] == 1:
            raise Killed

    with pytest.raises(Killed):
        run(tiny_pair, config, run_dir=tmp_path, on_epoch=kill_after_two)
    here = device_name(torch.device("cpu"))
    written = torch.load(tmp_path / CHECKPOINT, weights_only=True)["state"]["code_history"]
    assert [(c["from_epoch"], c["device"]) for c in written] == [(0, here)]
    elsewhere = "cpu: x86_64 Another CPU (AVX512), 1 threads"
    monkeypatch.setattr("micrec_core.training.train.device_name", lambda device: elsewhere)
    _, state, _ = run(tiny_pair, config, run_dir=tmp_path, resume=True)
    assert [(c["from_epoch"], c["device"]) for c in state.code_history] == [(0, here), (2, elsewhere)]
    assert state.code_history[0]["code_sha256"] == state.code_history[1]["code_sha256"]


def test_resume_rejects_a_different_config_or_data(tiny_pair: PairData, tmp_path: Path) -> None:
    run(tiny_pair, quick(max_epochs=1), run_dir=tmp_path)
    with pytest.raises(ValueError, match=r"different lr;"):
        run(tiny_pair, quick(max_epochs=2, lr=0.01), run_dir=tmp_path, resume=True)
    payload = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    payload["origin"]["dataset_sha256"] = "0" * 64
    torch.save(payload, tmp_path / CHECKPOINT)
    with pytest.raises(ValueError, match=r"different dataset_sha256;"):
        run(tiny_pair, quick(max_epochs=2), run_dir=tmp_path, resume=True)


def test_resume_across_code_is_opt_in_replayed_and_recorded(tiny_pair: PairData, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    config = quick(max_epochs=4)
    _, full_state, full_test = run(tiny_pair, config, run_dir=tmp_path / "full")
    assert [c["from_epoch"] for c in full_state.code_history] == [0]

    def kill_after_two(record: dict) -> None:
        if record["epoch"] == 1:
            raise Killed

    with pytest.raises(Killed):
        run(tiny_pair, config, run_dir=tmp_path / "killed", on_epoch=kill_after_two)
    written_by = full_state.code_history[0]["code_sha256"]
    monkeypatch.setattr("micrec_core.training.train.code_sha256", lambda: "f" * 64)
    with pytest.raises(ValueError, match=r"different code_sha256 \(continue it under this code with --resume-across"):
        run(tiny_pair, config, run_dir=tmp_path / "killed", resume=True)
    payload = torch.load(tmp_path / "killed" / CHECKPOINT, weights_only=True)
    recorded = payload["state"]["history"][-1]
    key = next(k for k in recorded if k.startswith("val_ndcg"))
    recorded[key] += 0.01  # as if this code scored the checkpoint's model differently
    (tmp_path / "changed").mkdir()
    torch.save(payload, tmp_path / "changed" / CHECKPOINT)
    with pytest.raises(ValueError, match="the code change alters the model"):
        run(tiny_pair, config, run_dir=tmp_path / "changed", resume=True, across_code=True)
    _, resumed_state, resumed_test = run(tiny_pair, config, run_dir=tmp_path / "killed", resume=True,
                                         across_code=True)
    assert resumed_test == full_test and resumed_state.history == full_state.history
    assert [(c["from_epoch"], c["code_sha256"]) for c in resumed_state.code_history] == [(0, written_by),
                                                                                         (2, "f" * 64)]


def _perturbed(pair: PairData) -> PairData:
    """The same pair with E_new, E_val and E_test replaced by other random edges."""
    gen = torch.Generator().manual_seed(9)
    domains = []
    for data in pair.domains:
        edges = dict(data.edges)
        for split in ("new", "val", "test"):
            n = edges[split].shape[1]
            edges[split] = torch.stack(
                [torch.randint(data.n_users, (n,), generator=gen), torch.randint(data.n_items, (n,), generator=gen)]
            )
        domains.append(replace(data, edges=edges))
    return replace(pair, domains=tuple(domains))


def _perturbed_unseen_features(pair: PairData, feats: list[ItemModalities]) -> list[ItemModalities]:
    """Features where every unseen item's content is replaced."""
    out = []
    for data, f in zip(pair.domains, feats, strict=True):
        unseen = ~data.item_seen
        text, image = f.text.clone(), f.image.clone()
        text[unseen] = torch.randn(int(unseen.sum()), text.shape[1])
        image[unseen] = torch.randn(int(unseen.sum()), image.shape[1])
        out.append(ItemModalities(text, f.text_mask | unseen, image, f.image_mask | unseen))
    return out


@pytest.mark.parametrize("model", ["micrec", "lightgcn"])
def test_no_leakage_into_training(tiny_pair: PairData, tmp_path: Path, model: str) -> None:
    """E_new / E_val / E_test edges and unseen items' content never change a trained parameter or a loss."""
    config = quick(model, max_epochs=2, patience=100)
    feats = random_features(tiny_pair)
    _, state_a, _ = run(tiny_pair, config, feats, run_dir=tmp_path / "a")
    _, state_b, _ = run(
        _perturbed(tiny_pair), config, _perturbed_unseen_features(tiny_pair, feats), run_dir=tmp_path / "b"
    )
    assert [h["loss"] for h in state_a.history] == [h["loss"] for h in state_b.history]
    params_a = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=True)["model"]
    params_b = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)["model"]
    assert params_a.keys() == params_b.keys()
    for key in params_a:
        torch.testing.assert_close(params_a[key], params_b[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("model", ["micrec", "inmo", "lightgcn"])
def test_unseen_entities_have_no_parameter(tiny_pair: PairData, model: str) -> None:
    s = setup(tiny_pair, quick(model), random_features(tiny_pair))
    for data, domain in zip(tiny_pair.domains, s.model.domains, strict=True):
        if model == "lightgcn":
            assert domain.user_emb.shape[0] == int(data.user_seen.sum())
            assert domain.item_emb.shape[0] == int(data.item_seen.sum())
            assert (domain.user_map[~data.user_seen] == -1).all()
        else:
            assert (domain.templates.user_map[~data.user_seen] == -1).all()
            assert (domain.templates.item_map[~data.item_seen] == -1).all()
            assert domain.user_templates.shape[0] == int(data.user_seen.sum())  # template ratio 1.0


@pytest.mark.parametrize(
    ("model", "ablation", "projectors", "se"),
    [("micrec", None, True, True), ("micrec", "no-cd", False, True), ("inmo", None, False, True),
     ("lightgcn", None, False, False)],
)
def test_gradients_reach_exactly_the_right_parameters(
    tiny_pair: PairData, model: str, ablation: str | None, projectors: bool, se: bool
) -> None:
    s = setup(tiny_pair, quick(model, ablation=ablation), random_features(tiny_pair))
    optimizer = torch.optim.Adam(s.model.parameters())
    train_step(s, 0.5, torch.Generator().manual_seed(0), optimizer)
    grads = {name: p.grad for name, p in s.model.named_parameters()}
    assert all((grads[n] is not None) == projectors for n in grads if n.startswith("projectors."))
    for d in range(2):
        if se:
            assert grads[f"domains.{d}.se_weight"] is not None
            assert grads[f"domains.{d}.user_templates"] is not None
        else:
            assert grads[f"domains.{d}.user_emb"] is not None


def test_ablations_change_the_neighbours(tiny_pair: PairData) -> None:
    feats = random_features(tiny_pair)
    full = setup(tiny_pair, quick(), feats).model.train_phases[0].item_neighbours
    no_vis = setup(tiny_pair, quick(ablation="no-vis"), feats).model.train_phases[0].item_neighbours
    no_mm = setup(tiny_pair, quick(ablation="no-mm"), feats).model.train_phases[0].item_neighbours
    assert full is not None and no_vis is not None and no_mm is None
    assert not torch.equal(full[0], no_vis[0])


def test_training_neighbours_are_seen_and_never_self(tiny_pair: PairData) -> None:
    s = setup(tiny_pair, quick(), random_features(tiny_pair))
    for data, phase in zip(tiny_pair.domains, s.model.train_phases, strict=True):
        for (idx, valid), seen in ((phase.user_neighbours, data.user_seen), (phase.item_neighbours, data.item_seen)):
            rows = torch.arange(len(idx)).unsqueeze(1).expand_as(idx)
            assert seen[idx[valid]].all()
            assert not (idx[valid] == rows[valid]).any()


def test_recommend_for_brand_new_user_and_item(tiny_pair: PairData) -> None:
    s, state, _ = run(tiny_pair, quick())
    alphas = domain_alphas(s, state)
    name = tiny_pair.domains[0].name
    history = tiny_pair.domains[0].item_ids[:3]
    picks = recommend_new(s, name, alphas, items=history, n=5)
    assert len(picks) == 5 and not set(history) & {item for item, _ in picks}
    assert [score for _, score in picks] == sorted((score for _, score in picks), reverse=True)
    users = tiny_pair.domains[0].user_ids[:4]
    targets = recommend_new(s, name, alphas, users=users, n=3)
    assert len(targets) == 3 and not set(users) & {u for u, _ in targets}
    with pytest.raises(ValueError, match="unknown items"):
        recommend_new(s, name, alphas, items=["nope"])


def test_cli_train_writes_metrics(tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from micrec_core.cli import main

    out = tmp_path / "run"
    code = main(["train", "--dataset", str(tiny_dataset), "--model", "inmo", "--max-epochs", "2", "--device", "cpu",
                 "--out", str(out), "--quiet"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"model", "ablation", "dataset", "seed", "lr", "dim", "tau"} <= set(metrics["config"])
    assert {"git_commit", "dataset_sha256", "device", "torch"} <= set(metrics["provenance"])
    capability = torch.backends.cpu.get_cpu_capability()  # the kernels torch takes on this CPU
    assert metrics["provenance"]["device"].startswith(f"cpu: {platform.machine()} ")
    assert f"({capability}" in metrics["provenance"]["device"], metrics["provenance"]["device"]
    assert isinstance(metrics["best_epoch"], int) and metrics["train_seconds"] > 0
    assert metrics["model_notes"] == {}  # Recommender.notes(): INMO has nothing to report about how it met the data
    for groups in metrics["test"].values():
        assert set(groups) == {"all", "seen_users", "unseen_users", "seen_items", "unseen_items", "low_degree_items"}
        for n in (5, 10, 20, 50):  # N = 100 exceeds the tiny domains' item counts and is left out
            assert "ndcg@100" not in groups["all"]
            for metric in ("ndcg", "recall", "precision"):
                value = groups["all"][f"{metric}@{n}"]
                assert 0.0 <= value <= 1.0
    assert (out / "model.pt").is_file() and (out / CHECKPOINT).is_file()


def test_evaluation_over_prebuilt_inference_graphs_is_the_same(tiny_pair: PairData) -> None:
    s, state, test = run(tiny_pair, quick())
    phases = [s.model.prepare_inference(d) for d in range(2)]
    assert evaluate_test(s, domain_alphas(s, state), phases) == test


def test_the_history_records_each_loss_term_and_the_gradient_ratio(tiny_pair: PairData) -> None:
    from micrec_core.models.losses import term_weights
    from micrec_core.training.train import GRAD_EVERY

    config = quick(max_epochs=GRAD_EVERY + 1)
    _, state, _ = run(tiny_pair, config)
    names = [d.name for d in tiny_pair.domains]
    terms = [f"loss/{t}/{n}" for t in ("bpr", "se") for n in names] + ["loss/cl"]
    weights = term_weights(config)[:5].tolist()
    for record in state.history:
        assert set(terms) <= set(record) and "loss/l2" not in record
        assert record["loss"] == pytest.approx(sum(w * record[t] for w, t in zip(weights, terms, strict=True)),
                                               rel=1e-5)
        assert ("grad_ratio" in record) == (record["epoch"] % GRAD_EVERY == 0)
    assert all(record["grad_ratio"] > 0 for record in state.history if "grad_ratio" in record)
    _, inmo, _ = run(tiny_pair, quick("inmo", max_epochs=2))
    assert all("loss/cl" not in r and "grad_ratio" not in r and f"loss/se/{names[0]}" in r for r in inmo.history)
    _, lightgcn, _ = run(tiny_pair, quick("lightgcn", max_epochs=1))
    assert not any(key.startswith("loss/se") for key in lightgcn.history[0])


def test_the_gradient_ratio_leaves_the_run_s_random_stream_alone(tiny_pair: PairData,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import micrec_core.training.train as train_module

    _, with_ratio, test_with = run(tiny_pair, quick(max_epochs=3))
    monkeypatch.setattr(train_module, "gradient_ratio", lambda *args: None)
    _, without, test_without = run(tiny_pair, quick(max_epochs=3))
    assert [r["loss"] for r in with_ratio.history] == [r["loss"] for r in without.history]
    assert test_with == test_without


def test_sum_reduction_weighs_l_cl_by_the_paper_not_by_the_batch_size(tiny_pair: PairData) -> None:
    from micrec_core.training.train import gradient_ratio

    feats = random_features(tiny_pair)
    terms, ratios = {}, {}
    for reduction in ("sum", "mean"):
        s = setup(tiny_pair, quick(loss_reduction=reduction), feats)
        terms[reduction] = s.model.loss_terms(s.model.draw(torch.Generator().manual_seed(3)), 0.5)
        ratios[reduction] = gradient_ratio(s, 0.5, 0)
    batch = torch.tensor(s.model.batch_sizes * 2, dtype=torch.float32)
    torch.testing.assert_close(terms["sum"][:4], terms["mean"][:4] * batch)
    torch.testing.assert_close(terms["sum"][4], terms["mean"][4])  # L_CL is a mean over users either way
    assert ratios["mean"] > min(s.model.batch_sizes) * ratios["sum"] / 2


def test_a_diverging_loss_stops_the_run_with_an_error_and_no_result(tiny_pair: PairData, tmp_path: Path) -> None:
    from micrec_core.runs.experiment import FAILED_FILE, run_experiment
    from micrec_core.training.train import TrainingDiverged

    config = quick(ablation="no-mm", cl_normalize=False, lr=0.05, gamma_cl=10.0, cl_users=64, batches_per_epoch=20,
                   max_epochs=10, patience=100, dataset=str(tiny_pair.path))
    with pytest.raises(TrainingDiverged, match="training diverged: loss/cl reached"):
        run_experiment(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "metrics.json").exists() and not (tmp_path / "run" / "model.pt").exists()
    record = json.loads((tmp_path / "run" / FAILED_FILE).read_text())
    assert record["config"]["cl_normalize"] is False and "diverged" in record["error"]
    train(setup(tiny_pair, replace(config, cl_normalize=True)))  # bounded by the normalisation: trains
    with pytest.raises(TrainingDiverged, match=r"is (nan|inf)"):
        train(setup(tiny_pair, replace(config, cl_normalize=True, lr=1e30)))
    with pytest.raises(TrainingDiverged, match=r"loss/(bpr|se)/.* at epoch 0, over 100 times its first step's"):
        train(setup(tiny_pair, replace(config, model="inmo", ablation=None, lr=1e9, max_epochs=3)))


def test_divergence_checks() -> None:
    from micrec_core.training.train import divergence

    first = {"epoch": 0, "loss": 10.0, "loss/bpr/A": 9.0, "loss/cl": 1.0, "start/loss/bpr/A": 12.0,
             "start/loss/cl": 1.5}
    assert divergence([], first, set()) is None
    exploded_at_once = first | {"loss/bpr/A": 1.3e3}
    assert "times its first step's 12" in divergence([], exploded_at_once, set())
    assert "is nan" in divergence([first], first | {"epoch": 1, "loss/bpr/A": float("nan")}, set())
    assert "over 100 times" in divergence([first], first | {"epoch": 1, "loss/cl": -101.0}, set())
    assert divergence([first], first | {"epoch": 1, "loss/cl": -101.0}, {"loss/cl"}) is None
    assert divergence([first], first | {"epoch": 1, "loss/bpr/A": 899.0}, set()) is None


def test_per_domain_model_selection_for_a_coupled_run(tiny_pair: PairData) -> None:
    _, state, _ = run(tiny_pair, quick(best_epoch="per-domain", max_epochs=4))
    assert len(state.best_epoch) == 2
    for d, best in enumerate(state.best_epoch):
        scores = [r[f"val_ndcg@20/{tiny_pair.domains[d].name}"] for r in state.history]
        assert best == scores.index(max(scores))


def test_a_pair_without_two_overlapping_users_refuses_the_contrastive_loss(tiny_pair: PairData) -> None:
    lonely = replace(tiny_pair, overlap=tiny_pair.overlap[:1])
    with pytest.raises(ValueError, match="share 1 seen user"):
        setup(lonely, quick(ablation="no-mm"))
    setup(lonely, quick(ablation="no-cd"), random_features(tiny_pair))  # without L_CL it trains


_TRAIN_AND_PRINT = """
import json, sys
from pathlib import Path
import micrec_core.training.train as train_module
from micrec_core.data.dataset import load_pair
from micrec_core.training.memory import retain_freed_memory
from tests.test_training import quick, run
if sys.argv[2] == "default":
    train_module.retain_freed_memory = lambda: False
_, state, test = run(load_pair(Path(sys.argv[1])), quick())
print(json.dumps({"retained": sys.argv[2] != "default" and retain_freed_memory(), "history": state.history,
                  "test": test}))
"""


def test_cpu_model_reads_the_model_name_else_the_architecture(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9654 96-Core Processor\n")
    assert cpu_model.__wrapped__(cpuinfo) == "AMD EPYC 9654 96-Core Processor"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: \n")
    assert cpu_model.__wrapped__(cpuinfo) == (platform.processor() or platform.machine())
    assert cpu_model.__wrapped__(tmp_path / "absent") == (platform.processor() or platform.machine())


def test_keeping_freed_memory_changes_no_result(tiny_dataset: Path) -> None:
    """memory.retain_freed_memory changes how glibc hands out memory, never what is computed: a run in a process with
    the default allocator and one with freed memory kept give equal histories and test metrics, bit for bit."""
    root = Path(__file__).resolve().parents[1]
    out = {}
    for mode in ("default", "retained"):
        done = subprocess.run([sys.executable, "-c", _TRAIN_AND_PRINT, str(tiny_dataset), mode], cwd=root,
                              capture_output=True, text=True, check=True)
        out[mode] = json.loads(done.stdout.splitlines()[-1])
    assert out["retained"]["retained"] is (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc")
    assert out["retained"]["history"] == out["default"]["history"]
    assert out["retained"]["test"] == out["default"]["test"]

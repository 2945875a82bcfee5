"""Sensitivity sweeps: typed --set values, their product, and selection on validation scores only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from micrec_core.runs.grid import collect, run_grid, variant_label
from micrec_core.runs.sweep import expand, parse_setting, select, validation_table


def test_settings_are_typed_like_the_config_field() -> None:
    assert parse_setting("gamma_cl=1,0.1") == ("gamma_cl", [1.0, 0.1])
    assert parse_setting("cl_normalize=true,False") == ("cl_normalize", [True, False])
    assert parse_setting("tau=none,0.2") == ("tau", [None, 0.2])
    assert parse_setting("cl_users=16") == ("cl_users", [16])
    assert parse_setting("loss_reduction=mean,sum") == ("loss_reduction", ["mean", "sum"])


@pytest.mark.parametrize(("spec", "message"), [
    ("gamma_cl", "key=value"), ("colour=red", "not a setting that can be swept"), ("seed=1", "not a setting"),
    ("cl_users=1.5", "not a valid int"), ("cl_normalize=yes", "not a valid bool"), ("lr=0.1,0.1", "listed twice"),
])
def test_bad_settings_are_named(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_setting(spec)


def test_the_sweep_is_the_product_of_the_settings() -> None:
    points = expand(["gamma_cl=1,0.1", "loss_reduction=mean,sum", "tau=0.2"])
    assert len(points) == 4 and {p["tau"] for p in points} == {0.2}
    assert {(p["gamma_cl"], p["loss_reduction"]) for p in points} == {(1.0, "mean"), (1.0, "sum"), (0.1, "mean"),
                                                                     (0.1, "sum")}
    assert expand([]) == [{}]
    with pytest.raises(ValueError, match="twice"):
        expand(["lr=0.1", "lr=0.2"])


def test_selection_reads_validation_scores_never_test(tiny_dataset: Path, tmp_path: Path) -> None:
    small = {"dim": 8, "max_epochs": 3, "batches_per_epoch": 2, "device": "cpu"}
    points = expand(["lr=0.001,0.05"])
    folders = run_grid(tiny_dataset, ["inmo"], [0, 1], tmp_path, settings=points, **small)
    results = collect(tmp_path, tiny_dataset)
    labels = {variant_label("inmo", p): p for p in points}
    table = validation_table(results, labels)
    assert list(table.index) == list(labels) and set(table["seeds"]) == {2}
    for folder in folders:  # the validation rows are each domain's stopping criterion at its kept epoch
        metrics = json.loads((folder / "metrics.json").read_text())
        rows = results[(results["source"] == "validation") & (results["variant"] == folder.parent.name)
                       & (results["seed"] == metrics["config"]["seed"])]
        for k, domain in enumerate(metrics["test"]):
            best = metrics["history"][metrics["best_epochs"][k]][f"val_ndcg@20/{domain}"]
            assert rows.loc[rows["domain"] == domain, "value"].item() == best
    chosen = select(table)
    assert table.loc[chosen, "mean"] == table["mean"].max()
    tampered = results.copy()  # test metrics play no part: making the other point's test scores perfect changes
    other = next(label for label in labels if label != chosen)  # nothing
    tampered.loc[(tampered["variant"] == other) & (tampered["source"] == "model"), "value"] = 1.0
    assert select(validation_table(tampered, labels)) == chosen
    with pytest.raises(ValueError, match="nothing to select"):
        select(validation_table(results, {"inmo+lr=9": {"lr": 9.0}}))


def test_a_sweep_point_equal_to_the_variant_is_the_variant_s_own_run() -> None:
    assert variant_label("micrec", {"gamma_cl": 1, "loss_reduction": "sum", "cl_loss": "paper"}) == "micrec"
    assert variant_label("micrec", {"gamma_cl": 0.1, "loss_reduction": "sum"}) == "micrec+gamma_cl=0.1"
    assert variant_label("micrec-infonce", {"cl_loss": "infonce", "tau": 0.2}) == "micrec-infonce+tau=0.2"
    assert variant_label("inmo", {"se_weight": "diagonal"}) == "inmo"
    assert variant_label("inmo", {"se_weight": "full"}) == "inmo+se_weight=full"
    assert variant_label("micrec", {"gamma_cl": 1, "cl_loss": "infonce"}) == "micrec-infonce"  # a named variant
    assert variant_label("micrec", {"gamma_cl": 0.1, "cl_loss": "infonce"}) == "micrec+cl_loss=infonce+gamma_cl=0.1"
    assert variant_label("no-cd", {"cl_loss": "infonce"}) == "no-cd+cl_loss=infonce"


def test_a_run_label_can_set_a_model_s_own_parameter(tiny_dataset: Path, tmp_path: Path) -> None:
    from micrec_core.runs.grid import parse_variant

    assert parse_variant("sgl+unseen_init=random") == ("sgl", {"params": {"unseen_init": "random"}})
    assert parse_variant("xsimgcl+lr=0.01+eps=0.2") == ("xsimgcl", {"lr": 0.01, "params": {"eps": 0.2}})
    assert variant_label("sgl", {"params": {"unseen_init": "random"}, "lr": 0.01}) == "sgl+lr=0.01+unseen_init=random"
    assert variant_label("sgl", {"params": {"unseen_init": "mean"}}) == "sgl"  # its default: SGL's own run
    for bad, message in (("sgl+unseen_init=zeros", "variant 'sgl\\+unseen_init=zeros': --param unseen_init must be"),
                         ("inmo+unseen_init=random", "nor a parameter of inmo's own \\(it has none\\)"),
                         ("alpharec+tau=0.2", "both a setting and a parameter of alpharec")):
        with pytest.raises(ValueError, match=message):
            parse_variant(bad)
    small = {"dim": 8, "max_epochs": 2, "batches_per_epoch": 2, "device": "cpu"}
    [trained] = run_grid(tiny_dataset, ["sgl+unseen_init=random"], [0], tmp_path / "alone", **small)
    assert trained.relative_to(tmp_path / "alone").as_posix() == "built/sgl+unseen_init=random/seed0"
    alone = json.loads((trained / "metrics.json").read_text())
    assert alone["config"]["params"]["unseen_init"] == "random" and alone["config"]["params"]["ssl_reg"] == 0.1
    assert "training_of" not in alone["provenance"]  # no finished SGL run to take the trained model from


def test_a_run_differing_only_in_an_inference_only_parameter_reuses_its_twin_s_trained_model(
        tiny_dataset: Path, tmp_path: Path) -> None:
    from micrec_core.config import Config
    from micrec_core.runs.experiment import reevaluate

    small = {"dim": 8, "max_epochs": 2, "batches_per_epoch": 2, "device": "cpu"}
    [alone] = run_grid(tiny_dataset, ["sgl+unseen_init=random"], [0], tmp_path / "alone", **small)
    [base] = run_grid(tiny_dataset, ["sgl"], [0], tmp_path, **small)
    stamp = (base / "metrics.json").stat().st_mtime_ns
    [folder] = run_grid(tiny_dataset, ["sgl+unseen_init=random"], [0], tmp_path, **small)
    assert folder.parent.name == "sgl+unseen_init=random" and (folder / "model.pt").is_file()
    assert (base / "metrics.json").stat().st_mtime_ns == stamp
    twin, plain, trained = (json.loads((f / "metrics.json").read_text()) for f in (folder, base, alone))
    assert twin["provenance"]["training_of"]["run"] == "sgl/seed0"
    assert twin["provenance"]["training_of"]["changed"] == ["unseen_init"]
    assert twin["config"]["params"]["unseen_init"] == "random" and twin["history"] == plain["history"]
    assert twin["test"] != plain["test"]  # the reading changes the scores ...
    assert twin["test"] == trained["test"] and twin["history"] == trained["history"]  # ... as training it would
    [again] = run_grid(tiny_dataset, ["sgl+unseen_init=random"], [0], tmp_path, **small)
    assert again == folder and json.loads((folder / "metrics.json").read_text()) == twin  # finished now: reused
    other = Config(model="sgl", dataset=str(tiny_dataset), seed=0, lr=0.01, params={"unseen_init": "random"},
                   **small)
    with pytest.raises(ValueError, match=r"not .*training twin"):
        reevaluate(base, other, tmp_path / "other")


def test_a_chapter_sweep_is_the_union_of_its_groups() -> None:
    from micrec_core.runs.sweep import sweep_points

    points = sweep_points("gamma_cl=1,0.1 loss_reduction=mean,sum; gamma_cl=1,0.1 tau=0.2;")
    assert len(points) == 6 and points[:4] == expand(["gamma_cl=1,0.1", "loss_reduction=mean,sum"])
    assert sweep_points("gamma_cl=1; gamma_cl=1") == [{"gamma_cl": 1.0}]
    # one configuration written two ways (the other group's setting at its default) is one point
    shared = sweep_points("gamma_cl=1,0.1 loss_reduction=mean,sum; gamma_cl=1,0.1 cl_loss=paper,infonce")
    assert len(shared) == 6 and {"gamma_cl": 1.0, "cl_loss": "paper"} not in shared
    assert {"gamma_cl": 0.1, "cl_loss": "infonce"} in shared
    assert sweep_points("") == []


def test_a_variant_can_carry_its_own_settings_as_its_run_label_names_them(tiny_dataset: Path, tmp_path: Path) -> None:
    from micrec_core.runs.grid import parse_variant

    assert parse_variant("inmo+se_weight=full+lr=0.01") == ("inmo", {"se_weight": "full", "lr": 0.01})
    assert parse_variant("micrec") == ("micrec", {})
    for bad, message in (("nomodel+lr=1", "variant must be one of"), ("inmo+lr", "expected name"),
                         ("inmo+lr=1+lr=2", "each key once"), ("inmo+lr=fast", "not a valid float")):
        with pytest.raises(ValueError, match=message):
            parse_variant(bad)
    small = {"dim": 8, "max_epochs": 1, "batches_per_epoch": 2, "device": "cpu"}
    labelled = run_grid(tiny_dataset, ["lightgcn+lr=0.01"], [0], tmp_path, **small)
    assert [f.relative_to(tmp_path).as_posix() for f in labelled] == ["built/lightgcn+lr=0.01/seed0"]
    stamp = (labelled[0] / "metrics.json").stat().st_mtime_ns
    assert run_grid(tiny_dataset, ["lightgcn"], [0], tmp_path, settings=[{"lr": 0.01}], **small) == labelled
    assert (labelled[0] / "metrics.json").stat().st_mtime_ns == stamp  # the same run, reused
    with pytest.raises(ValueError, match="both set lr"):
        run_grid(tiny_dataset, ["lightgcn+lr=0.01"], [0], tmp_path, settings=[{"lr": 0.1}], **small)


def test_a_narrowed_sweep_says_what_it_leaves_out() -> None:
    from micrec_core.runs.sweep import narrowing

    full = "gamma_cl=1,0.1,0.001 loss_reduction=mean,sum; gamma_cl=1,0.1 tau=0.2,0.5"
    text = narrowing("gamma_cl=1,0.1 loss_reduction=mean,sum", full)
    assert text.startswith("This sweep runs 4 of the 10 points") and "6 are left out" in text
    assert "gamma_cl = 0.001; tau = 0.2, 0.5." in text and "loss_reduction =" not in text
    assert narrowing(full, full).startswith("This sweep runs every point")
    defaults = narrowing("gamma_cl=1,0.1", "gamma_cl=1,0.1 cl_loss=paper,infonce")  # paper: Config's default
    assert defaults.startswith("This sweep runs 2 of the 4 points") and "cl_loss = infonce." in defaults

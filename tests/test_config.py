"""The run configuration: every option refused outside its domain (named), legacy configs, the CLI's flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from micrec_core.cli import CONFIG_FLAGS, build_parser, main
from micrec_core.config import LEGACY, Config


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [("max_epochs", 0, "--max-epochs"), ("tau", 0.0, "--tau"), ("tau", -0.1, "--tau"), ("lr", 0.0, "--lr"),
     ("lr", float("nan"), "--lr"), ("gamma_cl", -1.0, "--gamma-cl"), ("beta_se", -0.01, "--beta-se"),
     ("cl_users", 1, "--cl-users"), ("k_neighbours", -1, "--k-neighbours"), ("w_text", 1.5, "--w-text"),
     ("dropout", 1.0, "--dropout"), ("seed", -1, "--seed"), ("seed", 2**63, "--seed"), ("patience", 0, "--patience"),
     ("batches_per_epoch", 0, "--batches-per-epoch"), ("cl_loss", "other", "--cl-loss"),
     ("loss_reduction", "max", "--loss-reduction"), ("best_epoch", "last", "--best-epoch"),
     ("se_weight", "low-rank", "--se-weight"), ("eval_ns", [], "--eval-ns")],
)
def test_options_outside_their_domain_are_refused_by_name(field: str, value: object, flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        Config(**{field: value})  # type: ignore[arg-type]


def test_the_paper_literal_reduction_is_the_default() -> None:
    config = Config()
    assert (config.loss_reduction, config.cl_normalize, config.best_epoch) == ("sum", True, "joint")
    assert Config(model="inmo").best_epoch == "per-domain" and Config(model="inmo").se_weight == "diagonal"
    assert Config(ablation="no-cd").best_epoch == "per-domain"


def test_a_config_saved_before_a_field_existed_reads_as_the_run_it_was() -> None:
    old = Config().to_dict()
    for name in LEGACY:
        del old[name]
    config = Config.from_dict(old)
    assert config.loss_reduction == "mean" and config.cl_normalize and config.best_epoch == "joint"
    with pytest.raises(ValueError, match="unknown config keys: color"):
        Config.from_dict(Config().to_dict() | {"color": "red"})


def test_every_config_flag_reaches_the_config(tiny_dataset: Path, tmp_path: Path) -> None:
    values = {"max_epochs": "2", "gamma_cl": "0.5", "tau": "0.3", "cl_loss": "infonce", "loss_reduction": "mean",
              "cl_users": "8", "beta_se": "0.1", "k_neighbours": "2", "w_text": "0.7", "dropout": "0.2", "lr": "0.01",
              "se_weight": "diagonal", "best_epoch": "per-domain"}
    assert set(values) | {"cl_normalize"} == {name for name, _, _ in CONFIG_FLAGS}
    argv = ["train", "--dataset", str(tiny_dataset), "--out", str(tmp_path / "run"), "--model", "micrec",
            "--ablation", "no-mm", "--no-cl-normalize", "--device", "cpu", "--quiet"]
    for name, value in values.items():
        argv += ["--" + name.replace("_", "-"), value]
    args = build_parser().parse_args(argv)
    assert args.cl_normalize is False and args.loss_reduction == "mean"
    code = main(argv)
    assert code == 0
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]
    assert saved["cl_normalize"] is False
    for name, value in values.items():
        assert str(saved[name]) == value or saved[name] == float(value), name


def test_a_bad_option_exits_non_zero_before_any_file_is_written(tiny_dataset: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", "--dataset", str(tiny_dataset), "--out", str(out), "--tau", "0", "--quiet"]) == 2
    assert "--tau must be > 0" in capsys.readouterr().err
    assert not out.exists()


def test_a_model_parameter_it_does_not_have_is_refused(tiny_dataset: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--dataset", str(tiny_dataset), "--out", str(tmp_path / "run"), "--model", "inmo", "--quiet",
            "--param", "layers_mlp=[64,32]"]
    assert main(argv) == 2
    assert "--param: this model has no parameters of its own, got layers_mlp" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()

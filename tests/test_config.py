"""Run configs: defaults, overrides, validation errors, saving, and the shipped configs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from h2aseg.config import RunConfig, checkpoint_config, resolve_config, save_config, to_plain

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _write(tmp_path: Path, content: dict, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(content), encoding="utf-8")
    return path


@pytest.fixture
def minimal(tmp_path: Path) -> Path:
    return _write(tmp_path, {"data": {"root": "data/x"}, "model": {"name": "unet3d", "features": [2] * 6}})


def test_defaults_are_filled(minimal: Path) -> None:
    config = resolve_config(minimal)
    assert set(config) == {f.name for f in dataclasses.fields(RunConfig)}
    assert config["optim"] == {
        "lr": 1.0e-4,
        "weight_decay": 1.0e-5,
        "lr_decay": 0.99,
        "schedule": "exponential",
        "output_prior": None,
    }
    assert config["loss"]["deep_supervision_weights"] == [5, 4, 3, 2, 1]
    assert config["trainer"]["max_epochs"] == 200 and config["trainer"]["precision"] == "32-true"
    assert config["classes"] == {0: "background", 1: "lesion"}
    assert config["preprocess"]["patch_size"] == [128, 128, 64]
    assert config["preprocess"]["binarize_label"] is True
    assert Path(config["data"]["root"]).is_absolute() and Path(config["output_dir"]).is_absolute()


def test_overrides_are_parsed_as_yaml(minimal: Path) -> None:
    config = resolve_config(
        minimal,
        [
            "trainer.max_epochs=5",
            "optim.lr=3e-4",
            "trainer.devices=[0, 1]",
            "preprocess.patch_size=[32, 32, 16]",
            "data.cache_dir=null",
            "trainer.limit_train_batches=0.5",
            "model.dropout=0.1",
        ],
    )
    assert config["trainer"]["max_epochs"] == 5
    assert config["optim"]["lr"] == pytest.approx(3e-4)
    assert config["trainer"]["devices"] == [0, 1]
    assert config["preprocess"]["patch_size"] == [32, 32, 16]
    assert config["data"]["cache_dir"] is None
    assert config["trainer"]["limit_train_batches"] == 0.5
    assert config["model"] == {"name": "unet3d", "features": [2] * 6, "dropout": 0.1}


def test_new_model_name_drops_the_file_model_arguments(minimal: Path) -> None:
    config = resolve_config(minimal, ["model.name=vnet"])
    assert config["model"] == {"name": "vnet"}
    config = resolve_config(minimal, ["model.name=unet3d"])
    assert config["model"]["features"] == [2] * 6


def test_multiclass_target_turns_binarisation_off(minimal: Path) -> None:
    config = resolve_config(minimal, ["data.target=multiclass", "classes={0: bg, 1: GTVp, 2: GTVn}"])
    assert config["preprocess"]["binarize_label"] is False
    assert config["classes"] == {0: "bg", 1: "GTVp", 2: "GTVn"}
    config = resolve_config(minimal, ["data.target=multiclass", "classes.2=GTVn"])
    assert config["classes"] == {0: "background", 1: "lesion", 2: "GTVn"}


@pytest.mark.parametrize(
    ("content", "overrides", "message"),
    [
        ({"trainer": {"max_epoch": 3}}, [], r"unknown key trainer\.max_epoch"),
        ({"optimizer": {}}, [], "unknown key optimizer"),
        ({}, ["trainer.batchsize=2"], r"unknown key trainer\.batchsize"),
        ({"trainer": {"max_epochs": "many"}}, [], r"trainer\.max_epochs must be int"),
        ({"trainer": {"max_epochs": True}}, [], r"trainer\.max_epochs must be int"),
        ({"optim": {"lr": "fast"}}, [], r"optim\.lr must be float"),
        ({"data": "here"}, [], "data must be a section"),
        ({}, ["trainer.max_epochs"], "not of the form"),
        ({}, ["data.target=ternary"], r"data\.target must be one of"),
        ({}, ["model.name=no-such-net"], r"model\.name='no-such-net' is not one of"),
        ({"preprocess": {"patch_sz": [1, 2, 3]}}, [], r"unknown key preprocess\.patch_sz"),
        ({"preprocess": {"binarize_label": False}}, [], "contradicts data.target=binary"),
        ({}, ["classes={0: bg, 1: a, 2: b}"], "binary needs exactly two classes"),
        ({}, ["inference.overlap=1.5"], r"inference\.overlap must be in"),
        ({}, ["loss.deep_supervision_weights=[1, -1]"], "deep_supervision_weights"),
    ],
)
def test_bad_configs_raise_with_file_and_key(
    tmp_path: Path, content: dict, overrides: list[str], message: str
) -> None:
    content = {"data": {"root": "x"}, "model": {"name": "unet3d"}, **content}
    path = _write(tmp_path, content, name="bad_run.yaml")
    with pytest.raises(ValueError, match=message) as error:
        resolve_config(path, overrides)
    assert "bad_run.yaml" in str(error.value)


def test_unreadable_files_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        resolve_config(tmp_path / "missing.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="must be a mapping"):
        resolve_config(path)
    path.write_text("data: [unclosed\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid YAML"):
        resolve_config(path)


def test_saved_config_resolves_to_itself(minimal: Path, tmp_path: Path) -> None:
    config = resolve_config(minimal, ["trainer.max_epochs=7"])
    saved = save_config(config, tmp_path / "run" / "config.yaml")
    assert resolve_config(saved) == config
    assert [p.name for p in saved.parent.iterdir()] == ["config.yaml"]


@pytest.mark.parametrize("name", ["phantom", "autopet", "hecktor"])
def test_shipped_configs_resolve(name: str) -> None:
    config = resolve_config(CONFIGS / f"{name}.yaml")
    assert config["model"]["name"] == "h2aseg"
    assert config["optim"]["weight_decay"] == pytest.approx(1e-5)
    if name != "phantom":
        assert config["optim"] == {
            "lr": 1.0e-4,
            "weight_decay": 1.0e-5,
            "lr_decay": 0.99,
            "schedule": "exponential",
            "output_prior": None,
        }
        assert config["trainer"]["max_epochs"] == 200 and config["trainer"]["batch_size"] == 2
        assert config["preprocess"]["patch_size"] == [128, 128, 64]
        assert config["preprocess"]["samples_per_volume"] == 2


def test_typed_access_and_dict_access_agree(minimal: Path) -> None:
    config = resolve_config(minimal, ["trainer.batch_size=3"])
    assert config.trainer.batch_size == config["trainer"]["batch_size"] == 3
    assert config.trainer.max_steps is None
    assert resolve_config(minimal, ["trainer.max_steps=40"]).trainer.max_steps == 40


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.batchsize=2", r"override 'trainer\.batchsize=2': unknown key trainer\.batchsize"),
        ("trainer.max_steps=many", r"override 'trainer\.max_steps=many': trainer\.max_steps must be int"),
        ("trainer.devices=[a, 1]", r"trainer\.devices must be an int, a list of device indices"),
        ("trainer.limit_train_batches=true", r"trainer\.limit_train_batches must be null, an int or a float"),
        ("preprocess.cache_dir=/tmp/x", r"unknown key preprocess\.cache_dir"),
        ("preprocess.patch_size=[32, 32]", "patch_size must be three positive ints"),
    ],
)
def test_override_errors_name_the_override(minimal: Path, override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_config(minimal, [override])


def test_file_errors_do_not_blame_an_override(tmp_path: Path) -> None:
    path = _write(tmp_path, {"model": {"name": "unet3d"}, "trainer": {"batch_size": "two"}})
    with pytest.raises(ValueError, match=r"run\.yaml: trainer\.batch_size must be int") as error:
        resolve_config(path, ["trainer.max_epochs=3"])
    assert "override" not in str(error.value)


def test_old_checkpoint_config_still_loads(minimal: Path) -> None:
    """A config saved by the hand-written schema: plain dict, preprocess.cache_dir, no trainer.max_steps."""
    old = to_plain(resolve_config(minimal))
    old["preprocess"]["cache_dir"] = None
    del old["trainer"]["max_steps"]
    old["data"]["split_ratios"] = [6, 2, 2]
    loaded = checkpoint_config(old, "old.ckpt")
    assert isinstance(loaded, dict) and "cache_dir" not in loaded["preprocess"]
    assert loaded["trainer"]["max_steps"] is None
    assert loaded["model"] == {"name": "unet3d", "features": [2] * 6}
    with pytest.raises(ValueError, match=r"old\.ckpt: no resolved config"):
        checkpoint_config({"preprocess": {}}, "old.ckpt")

"""Shipped recipes validate against the schema; unknown keys and bad types fail naming the key."""

from __future__ import annotations

import re
import types

import pytest
import yaml

import njet_convert  # noqa: F401  (registers the zoo)
from njet_convert.errors import UserError
from njet_convert.recipes import list_recipes, load_recipe, parse_recipe, recipe_dirs

EXPECTED = {"resnet32-cifar10", "resnet110-cifar10", "nin-cifar10", "allcnn-cifar10", "efficientnet-b0-cifar10",
            "mnist-toy-2layer", "mnist-toy-4layer", "unet-fashion-multiscale", "deeplab-aspp-voc"}


def test_every_paper_experiment_has_a_valid_recipe():
    recipes = {r.name: r for r in list_recipes()}
    assert EXPECTED <= set(recipes)
    import timm

    for name, r in recipes.items():
        assert r.path and r.path.endswith(f"{name}.yaml"), "file name = recipe name"
        assert timm.is_model(r.model.name), (name, r.model.name)
        assert r.convert.order >= 0 and r.convert.k > 0 and r.train is not None


def test_paper_hyper_parameters():
    r32, nin, allcnn = load_recipe("resnet32"), load_recipe("nin-cifar10"), load_recipe("allcnn-cifar10")
    assert (r32.train.lr, r32.train.alpha_decay, r32.train.momentum) == (0.1, 1e-4, 0.9)
    assert (nin.train.lr, nin.train.alpha_decay) == (0.5, 0.01)
    assert (allcnn.train.lr, allcnn.train.alpha_decay) == (0.25, 1e-3)
    r110, eff = load_recipe("resnet110-cifar10"), load_recipe("efficientnet-b0-cifar10")
    for r in (r110, eff):
        assert (r.train.lr, r.train.batch_size, r.convert.subsample) == (0.001, 16, "keep")
    unet = load_recipe("unet-fashion-multiscale")
    assert (unet.train.optimizer, unet.train.lr, unet.train.batch_size, unet.train.epochs) == ("adam", 1e-4, 1, 50)
    assert "train.epochs" in r32.not_in_paper and "train.lr" not in r32.not_in_paper


def _minimal() -> dict:
    return {"name": "x", "description": "d", "paper": "p", "model": {"name": "resnet20"}}


@pytest.mark.parametrize(("patch", "message"), [
    ({"trian": {}}, "unknown key 'trian'"),
    ({"convert": {"order": 3, "sigmaa": 1.0}}, "unknown key 'convert.sigmaa'"),
    ({"convert": {"order": "three"}}, "convert.order: order must be an integer"),
    ({"convert": {"subsample": "sometimes"}}, "convert.subsample must be one of"),
    ({"not_in_paper": ["train.nothing"]}, "not_in_paper names an unknown key 'train.nothing'"),
])
def test_invalid_recipes_name_the_key(patch, message):
    with pytest.raises(UserError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_recipe({**_minimal(), **patch}, where="t.yaml")


def test_missing_required_key():
    data = _minimal()
    del data["model"]
    with pytest.raises(UserError, match="missing key 'model'"):
        parse_recipe(data)


def test_user_yaml_path_and_unknown_name(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({**_minimal(), "convert": {"order": 2, "k": 1.5}}))
    r = load_recipe(path)
    assert (r.convert.order, r.convert.k, r.path) == (2, 1.5, str(path))
    with pytest.raises(UserError, match="did you mean"):
        load_recipe("resnet32-cifar1O")


def test_yaml_exponents_without_dot_are_numbers():
    r = parse_recipe({**_minimal(), "train": {"lr": "1e-4"}})
    assert r.train.lr == 1e-4


def test_recipes_folder_is_found():
    assert any((d / "resnet32-cifar10.yaml").is_file() for d in recipe_dirs())



@pytest.mark.parametrize("name", ["resnet32-cifar10", "unet-fashion-multiscale", "deeplab-aspp-voc"])
def test_recipe_training_settings_are_ones_the_trainer_follows(name):
    from njet_convert.cli import build_parser
    from njet_convert.cli.defaults import recipe_defaults
    from njet_convert.training.cli import config_from_args

    parser = build_parser()
    parser.set_defaults(**recipe_defaults(load_recipe(name), parser))
    config = config_from_args(parser.parse_args([name]))
    train = load_recipe(name).train
    assert (config.optimizer, config.schedule, config.lr) == (train.optimizer, train.schedule, train.lr)
    assert config.milestones == tuple(train.milestones or ())
    assert config.sigma_max_step == train.sigma_max_step == 0.0  # the paper's optimisation: no σ step bound
    assert config_from_args(parser.parse_args([name, "--sigma-max-step", "0.05"])).sigma_max_step == 0.05


@pytest.mark.parametrize(("patch", "key"), [
    ({"train": {"class_weights": "inverse_frequency"}}, "train.class_weights"),
    ({"data": {"dataset": "cifar10", "scale": 4.0}}, "data.scale"),
    ({"data": {"dataset": "cifar10", "num_classes": 10}}, "data.num_classes"),
])
def test_keys_nothing_reads_are_rejected(patch, key):
    with pytest.raises(UserError, match=f"unknown key '{re.escape(key)}'"):
        parse_recipe({**_minimal(), **patch}, where="t.yaml")


def test_recipe_momentum_betas_and_data_reach_the_trainer():
    from njet_convert.cli import build_parser
    from njet_convert.cli.defaults import recipe_data, recipe_defaults
    from njet_convert.training.cli import config_from_args

    parser = build_parser()
    recipe = parse_recipe({**_minimal(), "train": {"optimizer": "adam", "momentum": 0.5, "betas": [0.8, 0.99]},
                           "data": {"dataset": "cifar10", "image_size": 40}})
    parser.set_defaults(**recipe_defaults(recipe, parser))
    args = parser.parse_args(["x", "--finetune"])
    recipe_data(args, types.SimpleNamespace(recipe=recipe))
    config = config_from_args(args)
    assert (config.momentum, config.betas) == (0.5, (0.8, 0.99))
    assert (args.finetune, args.image_size) == ("cifar10", 40)
    args = parser.parse_args(["x", "--finetune", "digits"])
    recipe_data(args, types.SimpleNamespace(recipe=recipe))
    assert args.finetune == "digits"  # an explicit DATA wins
    with pytest.raises(UserError, match="needs a recipe with a data section"):
        recipe_data(parser.parse_args(["x", "--finetune"]), types.SimpleNamespace(recipe=None))


@pytest.mark.parametrize("order, expected", [
    ("exact", "exact"), ("depthwise=exact,*=3", {"depthwise": "exact", "*": 3}),
    ({"dense": 4, "*": "exact"}, {"dense": 4, "*": "exact"}), (2, 2),
])
def test_recipe_order_takes_exact_and_rules(order, expected):
    assert parse_recipe({**_minimal(), "convert": {"order": order}}).convert.order == expected


def test_recipe_bad_order_names_the_key():
    with pytest.raises(UserError, match=r"t\.yaml: convert\.order: .*exact"):
        parse_recipe({**_minimal(), "convert": {"order": "exakt"}}, where="t.yaml")

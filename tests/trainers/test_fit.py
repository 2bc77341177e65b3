"""trainers.fit.data_config: what travels with the model into checkpoints and the registry."""

import pytest

from trainers.config import DataSection, ModelSection, Recipe
from trainers.fit import data_config

pytestmark = pytest.mark.unit


def test_data_config_carries_classes_words_and_geometry():
    recipe = Recipe(data=DataSection(crop_fraction=0.8), model=ModelSection(variant=299, resolution=128))
    manifest = {"classes": ["n00000001", "n00000000"], "words": {"n00000000": "digit zero"}}
    config = data_config(recipe, manifest)
    assert config["classes"] == ["n00000001", "n00000000"]
    assert config["words"] == ["n00000001", "digit zero"]  # a list in label order; a wnid stands in for missing words
    assert (config["resolution"], config["input_size"], config["crop_fraction"]) == (128, 128, 0.8)
    assert config["mean"] == pytest.approx((0.5, 0.5, 0.5)) and config["std"] == pytest.approx((0.5, 0.5, 0.5))

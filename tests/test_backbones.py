"""The backbone catalogue and the offline ImageNet weights (key rename checked on real photos)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from toptune_core.backbones.catalogue import CATALOGUE, create_model, get_backbone, load_package_weights, offline_backbones
from toptune_core.errors import BackboneError
from toptune_core.features.extractor import FeatureExtractor
from toptune_core.backbones.pixels import eval_data_config

ESPRESSO, CUP, COFFEE_MUG = 967, 968, 504
TABBY, TIGER_CAT, EGYPTIAN_CAT = 281, 282, 285


def _photo(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=95)
    return buf.getvalue()


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_offline_weights_classify_real_photos(name):
    """After the key rename the weights load strictly and recognise an espresso and a cat."""
    import skimage.data

    model = create_model(name, num_classes=None)  # strict=True load inside; keeps the ImageNet head
    extractor = FeatureExtractor(name)
    with torch.inference_mode():
        batch = torch.stack([extractor.preprocess(_photo(skimage.data.coffee())),
                             extractor.preprocess(_photo(skimage.data.chelsea()))])
        proba = model(batch).softmax(-1)
    assert proba[0].argmax().item() == ESPRESSO
    assert set(proba[1].topk(3).indices.tolist()) & {TABBY, TIGER_CAT, EGYPTIAN_CAT}


def test_rename_covers_every_timm_key():
    import timm

    state = load_package_weights(get_backbone("tf_efficientnet_lite0"))
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    assert set(state) == set(model.state_dict())
    assert len(state) == 296


def test_catalogue_metadata_matches_timm():
    for name in offline_backbones():
        spec = CATALOGUE[name]
        cfg = eval_data_config(name)
        assert cfg["input_size"][-1] == spec.input_size
        assert cfg["mean"] == [0.5, 0.5, 0.5]  # TF-ported Lite models: inputs scaled to [-1, 1]
        model = create_model(name)
        with torch.inference_mode():
            assert model(torch.zeros(1, 3, spec.input_size, spec.input_size)).shape == (1, spec.feature_dim)
    assert offline_backbones() == ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]
    assert not CATALOGUE["efficientnet_b0"].offline


def test_hub_backbone_offline_gives_clear_error():
    """Here the hub is unreachable: asking for a hub model names the offline backbones instead of a stack trace."""
    from toptune_core.backbones.catalogue import hub_reachable

    if hub_reachable():
        pytest.skip("the Hugging Face hub is reachable from this machine")
    with pytest.raises(BackboneError) as err:
        create_model("efficientnet_b0")
    assert "tf_efficientnet_lite0" in str(err.value) and "offline" in str(err.value)


def test_unknown_backbone_is_named():
    with pytest.raises(BackboneError, match="Unknown backbone 'not_a_model'"):
        get_backbone("not_a_model")

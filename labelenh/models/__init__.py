"""Classifiers: CIFAR ResNets, the shallow CNN student, and timm / torchvision bridges.

`build_model(name, num_classes)` returns an `nn.Module` mapping normalised float
[B, C, H, W] to logits [B, K]; `list_models()` lists the registry names.
"""

from labelenh.models import cifar_resnet, shallow  # noqa: F401  (registers the models)
from labelenh.models._registry import ModelFactory, build_model, list_models, register_model
from labelenh.models.weights import load_weights, read_state_dict

__all__ = [
    "ModelFactory",
    "build_model",
    "list_models",
    "load_weights",
    "read_state_dict",
    "register_model",
]

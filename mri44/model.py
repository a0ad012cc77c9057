"""The network: one definition for training and export (its checkpoints: mri44.checkpoint)."""

from __future__ import annotations

import torch
import torchvision
from torchvision.models import ResNet

from mri44.errors import CheckpointError
from mri44.keras_resnet import CAFFE_MEAN, CAFFE_STD, build_keras_resnet
from mri44.preprocess import IMAGENET_MEAN, IMAGENET_STD

ARCH = "resnet18"  # the user's model: what the shipped ONNX files are
# resnet50 is the Keras v1 layout (stride on the first 1x1 conv), because the only ImageNet ResNet-50 weights
# reachable offline are Keras' (train/pretrained.py); it serves as the teacher for distillation.
ARCHS = ("resnet18", "resnet50")


def build_model(num_classes: int, arch: str = ARCH) -> ResNet:
    """torchvision ResNet-18, or the Keras-layout ResNet-50, with its last layer sized for num_classes."""
    if arch == "resnet18":
        model = torchvision.models.resnet18(weights=None)
    elif arch == "resnet50":
        model = build_keras_resnet([3, 4, 6, 3])
    else:
        raise CheckpointError(f"architecture {arch!r} is not supported (choose one of {', '.join(ARCHS)})")
    model.fc = torch.nn.Linear(model.fc.in_features, num_classes)
    return model


def input_normalisation(arch: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) on the 0..1 scale that the architecture's ImageNet weights were trained with."""
    return (CAFFE_MEAN, CAFFE_STD) if arch == "resnet50" else (IMAGENET_MEAN, IMAGENET_STD)


def logits_and_features(model: ResNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A ResNet's logits and its last stage's feature map (N, C, h, w), the input of its global average pool:
    what the out-of-distribution score (mri44.ood) and class activation maps read. The ONNX export carries the
    same map as its `features` output."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    features = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    return model.fc(torch.flatten(model.avgpool(features), 1)), features

"""The Keras ResNet-50's architecture as a torchvision ResNet: what the core needs to rebuild a checkpoint made
from it (train/keras_convert.py converts the weights; see there for why and how)."""

from __future__ import annotations

from torchvision.models.resnet import Bottleneck, ResNet

# Keras "caffe" preprocessing, x_bgr_255 - mean, as (x_rgb_01 - mean) / std after folding BGR into conv1.
CAFFE_MEAN: tuple[float, float, float] = (123.68 / 255.0, 116.779 / 255.0, 103.939 / 255.0)
CAFFE_STD: tuple[float, float, float] = (1.0 / 255.0, 1.0 / 255.0, 1.0 / 255.0)


def use_v1_strides(model: ResNet) -> ResNet:
    """Move each stage's stride 2 from the 3x3 conv (torchvision, 'v1.5') to the first 1x1 conv (Keras, v1)."""
    for stage in (model.layer2, model.layer3, model.layer4):
        block = stage[0]
        block.conv1.stride, block.conv2.stride = (2, 2), (1, 1)
    return model


def build_keras_resnet(layers_per_stage: list[int], width: int = 64, num_classes: int = 1000) -> ResNet:
    """A torchvision Bottleneck ResNet with Keras' v1 stride layout (ResNet-50: [3, 4, 6, 3], width 64)."""
    model = ResNet(Bottleneck, layers_per_stage, num_classes=num_classes, width_per_group=width)
    return use_v1_strides(model)

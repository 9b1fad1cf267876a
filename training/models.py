"""Model architectures, chosen by name in the recipe.

Every model takes the normalised image (see ``device.analysis.preprocess.normalize``)
and ends in a softmax. The layer before the classifier is named "embedding"
so conversion can expose it for the out-of-distribution check.
"""
from __future__ import annotations

from pathlib import Path

import keras
from keras import layers


def _head(x, n_classes: int, dropout: float, width: int | None = None):
    if width:
        x = layers.Dense(width, activation="relu", name="embedding")(x)
    else:
        x = layers.Activation("linear", name="embedding")(x)
    if dropout:
        x = layers.Dropout(dropout)(x)
    return layers.Dense(n_classes, activation="softmax", name="probabilities")(x)


def lenet_lld(input_size: int, n_classes: int, dropout: float = 0.5, **_) -> keras.Model:
    """CEBE prototype: 4 conv layers 16/32/64/128, dense 256."""
    inp = keras.Input((input_size, input_size, 3), name="image")
    x = inp
    for ch in (16, 32, 64, 128):
        x = layers.Conv2D(ch, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    return keras.Model(inp, _head(x, n_classes, dropout, 256), name="lenet_lld")


def thanh_cnn(input_size: int, n_classes: int, dropout: float = 0.5, **_) -> keras.Model:
    """After Thanh et al. (Minia prototype): 3 conv layers, 5x5, 16/32/64."""
    inp = keras.Input((input_size, input_size, 3), name="image")
    x = inp
    for ch in (16, 32, 64):
        x = layers.Conv2D(ch, 5, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    return keras.Model(inp, _head(x, n_classes, dropout, 128), name="thanh_cnn")


def _conv_bn(x, ch: int, stride: int = 1, momentum: float = 0.9, norm: str = "batch"):
    x = layers.Conv2D(ch, 3, strides=stride, padding="same", use_bias=False)(x)
    if norm == "group":
        # Statistics of each image alone: nothing learnt about one lab's feature scale is carried to another
        # (batch norm's moving averages are; Tsutsui et al. 2023).
        x = layers.GroupNormalization(groups=8)(x)
    else:
        x = layers.BatchNormalization(momentum=momentum)(x)
    return layers.ReLU()(x)


def leukonet_gn(input_size: int, n_classes: int, dropout: float = 0.3, width: float = 1.0, **_) -> keras.Model:
    """``leukonet`` with group normalisation in place of batch norm."""
    return leukonet(input_size, n_classes, dropout, width, norm="group")


def leukonet(input_size: int, n_classes: int, dropout: float = 0.3, width: float = 1.0,
             bn_momentum: float = 0.9, norm: str = "batch", **_) -> keras.Model:
    """Compact VGG-style CNN with batch norm: a strided stem, four stages of two
    3x3 convolutions, global average pooling. Dense convolutions run well on
    XNNPACK int8 kernels and train quickly on a CPU."""
    c = lambda n: max(8, int(round(n * width / 8)) * 8)  # noqa: E731
    inp = keras.Input((input_size, input_size, 3), name="image")
    x = _conv_bn(inp, c(24), 2, bn_momentum, norm)
    for i, ch in enumerate((32, 64, 128, 256)):
        if i:
            x = layers.MaxPooling2D()(x)
        x = _conv_bn(x, c(ch), 1, bn_momentum, norm)
        x = _conv_bn(x, c(ch), 1, bn_momentum, norm)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, _head(x, n_classes, dropout), name="leukonet")


def mobilenetv2(input_size: int, n_classes: int, dropout: float = 0.3, width: float = 1.0,
                weights: str | None = None, bn_momentum: float = 0.9, freeze_bn: bool = False,
                **_) -> keras.Model:
    """Keras MobileNetV2, never downloading weights; optional local weights file.

    Its batch-norm momentum (0.999) is lowered: from scratch on a few thousand
    images the moving statistics otherwise lag for many epochs and validation
    sits at chance while training accuracy climbs. ``freeze_bn`` keeps every batch-norm
    layer in inference mode: the shared ImageNet weights have batch norm folded into
    the convolutions (identity statistics), and one lab's batch statistics must not
    be learnt into the network (Tsutsui et al. 2023).
    """
    if weights and not Path(weights).is_file():
        raise FileNotFoundError(f"mobilenetv2 weights file not found: {weights}")
    inp = keras.Input((input_size, input_size, 3), name="image")
    # MobileNetV2 expects [-1, 1]; our unit-normalised input is mapped inside the model.
    scaled = layers.Rescaling(2.0, offset=-1.0)(inp)
    base = keras.applications.MobileNetV2(input_shape=(input_size, input_size, 3), alpha=width,
                                          include_top=False, weights=None,
                                          name="backbone")  # frozen by this name for the head-only epochs
    if weights:
        base.load_weights(weights, skip_mismatch=True)
    for layer in base.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = bn_momentum
            if freeze_bn:
                layer.trainable = False
    x = layers.GlobalAveragePooling2D()(base(scaled))
    return keras.Model(inp, _head(x, n_classes, dropout), name="mobilenetv2")


MODELS = {"lenet-lld": lenet_lld, "thanh-cnn": thanh_cnn, "leukonet": leukonet, "leukonet-gn": leukonet_gn,
          "mobilenetv2": mobilenetv2}


def build_model(name: str, input_size: int, n_classes: int, **options) -> keras.Model:
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}") from None
    return factory(input_size, n_classes, **options)

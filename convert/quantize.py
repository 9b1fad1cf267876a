"""Keras -> TFLite: full-integer int8 (default), float16 or dynamic-range."""
from __future__ import annotations

from typing import Iterator

import numpy as np

VARIANTS = ("int8", "float16", "dynamic")


def with_embedding(model):
    """The same network with a second output: the 'embedding' layer, for the unfamiliar-cell check."""
    import keras

    return keras.Model(model.inputs, [model.get_layer("probabilities").output, model.get_layer("embedding").output],
                       name=f"{model.name}_with_embedding")


def to_tflite(model, variant: str, representative: np.ndarray | None = None) -> bytes:
    import tensorflow as tf

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if variant == "int8":
        if representative is None or len(representative) == 0:
            raise ValueError("int8 quantization needs a representative set")

        def gen() -> Iterator[list[np.ndarray]]:
            for i in range(len(representative)):
                yield [representative[i : i + 1].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = gen
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    elif variant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    else:  # dynamic-range: int8 weights, float activations
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()

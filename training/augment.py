"""Training-time augmentation as TensorFlow ops on uint8 batches in tf.data."""
from __future__ import annotations


import numpy as np
import tensorflow as tf

from training.config import AugmentConfig

# Haematoxylin-eosin-DAB stain vectors (Ruifrok & Johnston) for colour jitter in
# optical-density space: it mimics stain strength differing between labs.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float32)
_RGB_FROM_HED /= np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED).astype(np.float32)


def _stain_jitter(img: tf.Tensor, sigma: float, seed) -> tf.Tensor:
    """img float32 [0, 255] (H, W, 3)."""
    od = -tf.math.log((img + 1.0) / 256.0)
    hed = tf.reshape(od, (-1, 3)) @ _HED_FROM_RGB
    # Jitter the haematoxylin and eosin channels only; the third carries almost nothing here.
    scale, shift = tf.unstack(tf.random.stateless_uniform((2, 2), seed, -sigma, sigma))
    hed = hed * (1.0 + tf.concat([scale, [0.0]], 0)) + tf.concat([shift, [0.0]], 0)
    od = tf.reshape(hed @ _RGB_FROM_HED, tf.shape(img))
    return tf.clip_by_value(256.0 * tf.exp(-od) - 1.0, 0.0, 255.0)


def _blur(img: tf.Tensor, max_sigma: float, seed) -> tf.Tensor:
    sigma = tf.random.stateless_uniform((), seed, 0.0, max_sigma) + 1e-3
    r = tf.range(-3.0, 4.0)
    k = tf.exp(-0.5 * tf.square(r / sigma))
    k = k / tf.reduce_sum(k)
    kx = tf.tile(tf.reshape(k, (1, 7, 1, 1)), (1, 1, 3, 1))
    ky = tf.tile(tf.reshape(k, (7, 1, 1, 1)), (1, 1, 3, 1))
    x = tf.nn.depthwise_conv2d(img[None], kx, (1, 1, 1, 1), "SAME")
    return tf.nn.depthwise_conv2d(x, ky, (1, 1, 1, 1), "SAME")[0]


def _affine(img: tf.Tensor, cfg: AugmentConfig, seed) -> tf.Tensor:
    size = tf.cast(tf.shape(img)[0], tf.float32)
    r = tf.random.stateless_uniform((4,), seed, -1.0, 1.0)
    zoom = 1.0 + cfg.zoom * r[0]
    shear = cfg.shear * r[1]
    tx, ty = cfg.shift * size * r[2], cfg.shift * size * r[3]
    c = size / 2.0
    # Output pixel (x, y) samples input at A @ (x - c, y - c) + c + t; A = shear @ zoom^-1
    a0, a1 = 1.0 / zoom, tf.tan(shear) / zoom
    b0, b1 = 0.0, 1.0 / zoom
    transform = tf.stack([a0, a1, c - a0 * c - a1 * c + tx, b0, b1, c - b1 * c + ty, 0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=img[None], transforms=transform[None], output_shape=tf.shape(img)[:2],
        interpolation="BILINEAR", fill_mode="REFLECT", fill_value=0.0)
    return out[0]


def augment_image(img: tf.Tensor, cfg: AugmentConfig, seed, window=None, fill: float = 0.0) -> tf.Tensor:
    """uint8 (H, W, 3) -> uint8, the same size. ``seed`` is a shape-(2,) int tensor. ``window``: the
    bundle's round window (bool H x W); outside it is reset to ``fill`` after the geometry and colour
    changes, so the model always sees the window the device shows it."""
    seeds = tf.random.experimental.stateless_split(seed, 12)
    x = tf.cast(img, tf.float32)
    if cfg.flip:
        x = tf.image.stateless_random_flip_left_right(x, seeds[0])
        x = tf.image.stateless_random_flip_up_down(x, seeds[1])
    if cfg.rot90:
        k = tf.random.stateless_uniform((), seeds[2], 0, 4, dtype=tf.int32)
        x = tf.image.rot90(x, k)
    if cfg.zoom or cfg.shear or cfg.shift:
        x = _affine(x, cfg, seeds[3])
    if cfg.blur:
        x = _blur(x, cfg.blur, seeds[7])
    if cfg.stain:
        x = _stain_jitter(x, cfg.stain, seeds[4])
    if cfg.brightness:
        x = x + 255.0 * tf.random.stateless_uniform((), seeds[5], -cfg.brightness, cfg.brightness)
    if cfg.contrast:
        f = tf.random.stateless_uniform((), seeds[6], 1.0 - cfg.contrast, 1.0 + cfg.contrast)
        mean = tf.reduce_mean(x, axis=(0, 1), keepdims=True)
        x = (x - mean) * f + mean
    if cfg.hue or cfg.saturation:
        y = tf.clip_by_value(x / 255.0, 0.0, 1.0)
        if cfg.hue:
            y = tf.image.stateless_random_hue(y, cfg.hue, seeds[8])
        if cfg.saturation:
            y = tf.image.stateless_random_saturation(y, 1.0 - cfg.saturation, 1.0 + cfg.saturation, seeds[9])
        x = y * 255.0
    if cfg.grey:
        g = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(x))
        x = tf.where(tf.random.stateless_uniform((), seeds[10]) < cfg.grey, g, x)
    if window is not None:
        x = tf.where(tf.constant(window)[:, :, None], x, tf.constant(fill, tf.float32))
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)

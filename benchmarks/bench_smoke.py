"""Smoke mode, shared by the benchmark scripts: every step of a benchmark at tiny sizes, in
seconds, so that ``make test`` (``tests/test_benchmarks.py``) runs each script end to end and
``make bench`` cannot rot. A smoke run's figures mean nothing; its goals are computed and printed
like any run's, and its JSON says ``"smoke": true``.

The image model of a smoke run is a stand-in for MobileNetV2: converting Keras' MobileNetV2 takes
about 20 s per conversion on a 2-core host even at 32x32 and width 0.35 (its 150 layers, not its
weights, cost the time), so smoke runs build a few-layer network with the same kinds of layers
(convolutions, a depthwise one, batch normalisation, ReLU6, global pooling, softmax) instead.
"""

from __future__ import annotations

import argparse
from typing import Any, Literal

RunMode = Literal["full", "quick", "smoke"]

SMOKE_IMAGE_MODEL = "tiny-cnn"
"""The name of the smoke runs' stand-in for MobileNetV2 (rows and goals carry it)."""


def add_mode_options(ap: argparse.ArgumentParser, quick_help: str) -> None:
    """``--quick`` and ``--smoke``, one at most."""
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help=quick_help)
    group.add_argument(
        "--smoke", action="store_true", help="tiny sizes, seconds: checks the script runs"
    )


def mode_of(args: argparse.Namespace) -> RunMode:
    return "smoke" if args.smoke else "quick" if args.quick else "full"


def stand_in_image_model(keras: Any, size: int, classes: int, name: str = SMOKE_IMAGE_MODEL) -> Any:
    """A few-layer image classifier with random weights: input ``(size, size, 3)`` named
    ``image``, softmax over ``classes``."""
    keras.utils.set_random_seed(0)
    L = keras.layers
    inp = keras.Input((size, size, 3), name="image")
    x = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inp)
    x = L.BatchNormalization()(x)
    x = L.ReLU(6.0)(x)
    x = L.DepthwiseConv2D(3, padding="same")(x)
    x = L.Conv2D(16, 1, activation="relu")(x)
    x = L.GlobalAveragePooling2D()(x)
    out = L.Dense(classes, activation="softmax", name="probs")(x)
    return keras.Model(inp, out, name=name)

"""Packaging on a developer's machine: a training run and a converted model into one signed bundle
(``package``), train-convert-package in one go (``build``), and what a TFLite model needs from the
runtime that loads it (``modelinfo``)."""

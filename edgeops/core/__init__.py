"""What every part of edgeops shares, and the only part of ``edgeops`` a device imports.

The wire protocol (``wire``, ``topics``, ``commands``), the error tree (``errors``), bundles and
their signatures (``bundle``, ``signing``), a model's input profile and the statistics a device
reports (``profile``, ``stats``, ``latency``, ``window``), model inputs (``tensors``, ``feeds``,
``preprocessing``, ``datafiles``, ``columns``), how a component reaches the broker (``broker``),
request-body limits (``bodies``), lazy optional imports (``optional``), and plain-text tables for
the terminal (``terminal``). Nothing here imports TensorFlow, the converters, the trainer, the
service or the drift maths; ``tests/test_boundaries.py`` holds it to that.
"""

"""The trainer, run on a developer's machine: a TFX-like pipeline (ingest, validate, profile a
baseline, transform, train, evaluate) in ``run`` and ``pipeline``, its steps in ``steps``, the
models it builds in ``models``, data schemas in ``schema``, evaluation metrics in ``metrics``, and
the small real datasets and models the demo, tests and benchmarks use in ``samples``."""

"""Telemetry windows: accumulating a model's inputs and outputs on the device (``accumulator``),
the per-feature parts a window carries (``parts``), and merging windows into a span (``merge``)."""

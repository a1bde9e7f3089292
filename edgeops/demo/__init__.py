"""``make demo``: the whole loop end to end on embedded defaults (``run``), with its models in
``models``."""

"""The fleet simulator behind ``edgeops simulate``: many real agents in one process, fed real
rows, with drift injected on chosen devices.

- :mod:`edgeops.simulate.spec`: drift specs (``kind=covariate,amount=2,devices=0-9``) and option
  strings, parsed into types;
- :mod:`edgeops.simulate.inject`: the drift maths, pure functions over numpy arrays;
- :mod:`edgeops.simulate.data`: the rows to replay, from a file or the bundle's sample dataset;
- :mod:`edgeops.simulate.config`: :class:`FleetConfig`, what to simulate;
- :mod:`edgeops.simulate.fleet`: :class:`Fleet`, which owns the agents and the feeder threads;
- :mod:`edgeops.simulate.stats`: what the fleet did, as records, a progress line and a table;
- :mod:`edgeops.simulate.pollselect`: lets paho-mqtt wait on descriptors numbered past 1023.

Importing this package imports neither TensorFlow nor the agent; :meth:`Fleet.start` needs the
``agent`` extra (and scikit-learn, of the ``train`` extra, for the sample datasets).
"""

from edgeops.simulate.config import FleetConfig
from edgeops.simulate.data import load_samples
from edgeops.simulate.fleet import Fleet
from edgeops.simulate.inject import Samples, apply_drift
from edgeops.simulate.spec import DriftSpec, parse_drift, parse_labels
from edgeops.simulate.stats import DeviceStats, FleetStats, summary_table

__all__ = [
    "DeviceStats",
    "DriftSpec",
    "Fleet",
    "FleetConfig",
    "FleetStats",
    "Samples",
    "apply_drift",
    "load_samples",
    "parse_drift",
    "parse_labels",
    "summary_table",
]

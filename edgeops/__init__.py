"""edgeops: convert, quantize, benchmark and operate ML models on edge devices."""

__version__ = "0.1.0"

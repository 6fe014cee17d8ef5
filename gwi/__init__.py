"""gwi: runs a seismic Full Waveform Inversion team's data, training and submissions."""

__version__ = "0.1.0"

"""gwi: runs a seismic Full Waveform Inversion team's data, training and submissions."""

import time

__version__ = "0.1.0"
# when this process began gwi's work (importing the package is its first step): a train time budget
# counts from here, so the imports and the pull are inside it
STARTED = time.time()

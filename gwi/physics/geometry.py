"""The acquisition a forward model simulates: grid, time axis, wavelet, sources and receivers."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data.layout import DT, DX, FREQ, N_RECEIVERS, NT, NX, NZ, RECEIVER_Z, SOURCE_X, SOURCE_Z


@dataclass(frozen=True)
class Geometry:
    """OpenFWI's by default: 70×70 cells of 10 m, 1000 steps of 1 ms, a 15 Hz Ricker, five sources
    and 70 receivers one cell (10 m) below the surface."""

    nz: int = NZ
    nx: int = NX
    dx: float = DX
    dt: float = DT
    nt: int = NT
    freq: float = FREQ
    source_x: tuple[int, ...] = SOURCE_X
    source_z: int = SOURCE_Z
    receiver_x: tuple[int, ...] = field(default_factory=lambda: tuple(range(N_RECEIVERS)))
    receiver_z: int = RECEIVER_Z

    def describe(self) -> dict:
        """The manifest's record of it."""
        return {"dx_m": self.dx, "dt_s": self.dt, "nt": self.nt, "freq_hz": self.freq, "nz": self.nz,
                "nx": self.nx, "source_x": list(self.source_x), "source_z": self.source_z,
                "receiver_x": list(self.receiver_x), "receiver_z": self.receiver_z}

    @property
    def seismic_shape(self) -> tuple[int, int, int]:
        return len(self.source_x), self.nt, len(self.receiver_x)

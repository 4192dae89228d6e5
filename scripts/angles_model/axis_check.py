"""Fitted shower axis of a model at 50 GeV, 30 and 60 deg (phi 0), with and without its axis
shift, against the Geant4 test sets in /work/g4data. Usage: python axis_check.py MODEL_DIR"""

import sys

import numpy as np

sys.path.insert(0, "scripts/angles_model")
from layer_shift_experiment import fitted_theta

from calogen.data.io import read_showers
from calogen.data.packed import pack
from calogen.directions import directions_from_angles
from calogen.models.registry import load_generator

g = load_generator(sys.argv[1])
for t, name in ((30, "g4_50GeV_t30_p0"), (60, "g4_50GeV_t60_p0")):
    ref = fitted_theta(pack(read_showers(f"/work/g4data/{name}.h5")))
    d = directions_from_angles([t] * 1000, [0.0] * 1000)
    e = np.full(1000, 50.0)
    a = fitted_theta(pack(g.sample(e, d, seed=11)))
    shift = g.model.axis_shift
    g.model.axis_shift = None
    b = fitted_theta(pack(g.sample(e, d, seed=11)))
    g.model.axis_shift = shift
    print(f"{name}: Geant4 {ref:.2f} deg; model with shift {a - ref:+.2f}, without {b - ref:+.2f}")

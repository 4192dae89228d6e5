"""calogen: fast, geometry-independent calorimeter shower simulation with generative models.

Showers are exchanged everywhere as :class:`showerdata.Showers` with 4 point channels
``(x [mm], y [mm], layer index, energy [GeV])``, incident energies ``[N, 1]`` in GeV and
directions ``[N, 3]`` as unit vectors.
"""

__version__ = "0.1.0"

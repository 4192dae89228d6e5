"""Trained models shipped with the package besides the default (``calogen/default_model``),
selected by name: ``calogen generate --model l2lflows`` (see :data:`calogen.cli.SHIPPED_MODELS`
and docs/bibae_l2lflows.md for how each was made)."""

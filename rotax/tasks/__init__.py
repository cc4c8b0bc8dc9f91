"""Tasks (environments) for rotax studies; :mod:`rotax.tasks.points` is GeneralPoints."""

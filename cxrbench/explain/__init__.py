"""Explanations: the attribution methods and their runner, randomisation checks, and the metrics that score maps (in ``metrics``)."""

__all__ = ['attribution', 'plots', 'randomisation', 'metrics']

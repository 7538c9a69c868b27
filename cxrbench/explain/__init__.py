"""Explanations: the attribution methods (in ``methods``) and their runner, randomisation checks, and the metrics that score maps (in ``metrics``)."""

__all__ = ['aoppc_run', 'attribute_run', 'attribution', 'memory', 'methods', 'metrics', 'plots', 'prepare', 'randomisation',
           'runner', 'selection', 'store']

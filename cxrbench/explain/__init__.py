"""Explanations: the attribution methods (``methods``) and their runner, the explain stages' runs, and the metrics that score maps (``metrics``)."""

__all__ = ['aoppc_resume', 'aoppc_run', 'attribute_run', 'attribution', 'memory', 'methods', 'metrics', 'plots', 'prepare',
           'randomisation', 'randomisation_run', 'reliability', 'reliability_run', 'runner', 'selection', 'store']

"""Foundations every other subpackage uses: params, atomic I/O, runtime, pipeline paths, bootstrap statistics, plotting, checkpoints and where interrupted stages keep them, the headline metrics, stage timing."""

__all__ = ['bootstrap', 'checkpoints', 'headline', 'inference', 'io', 'params', 'paths', 'plotting', 'resume', 'runtime', 'timing']

"""External validation: the run's trained classifiers scored on images of patients that no model has seen."""

__all__ = ['images', 'overlap', 'run', 'sources', 'stats', 'tables']

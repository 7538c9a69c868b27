"""Classifiers: backbones and weights, training, evaluation with thresholds chosen on validation, the ensemble, the authors' scoring."""

__all__ = ['ensemble', 'evaluation', 'gpu', 'models', 'paper_scoring', 'training', 'weights']

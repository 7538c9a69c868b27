"""Classifiers: backbones and weights, training, the identity check of a trained model, evaluation with thresholds chosen on validation, the ensemble, the authors' scoring."""

__all__ = ['ensemble', 'evaluation', 'gpu', 'hierarchy', 'identity', 'models', 'multiclass', 'paper_scoring', 'schedules', 'task', 'training', 'weights']

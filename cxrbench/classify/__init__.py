"""Classifiers: backbones and weights (CXR-Net's encoder-decoder-encoder among them), training, the identity check of a trained model, batch norm folded for forward-only inference, evaluation with thresholds chosen on validation, the ensemble, the authors' scoring."""

__all__ = ['cxrnet', 'ensemble', 'evaluation', 'fuse', 'gpu', 'hierarchy', 'identity', 'models', 'multiclass', 'paper_scoring',
           'schedules', 'task', 'training', 'weights']

"""Lung segmentation: the U-Net, its masks, and the inputs derived from them (lungs only, the shortcut audit's controls)."""

__all__ = ['controls', 'segmentation', 'unet']

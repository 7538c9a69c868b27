"""The study's report and model card."""

__all__ = ['document', 'model_card']

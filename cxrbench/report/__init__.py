"""The study's report (README.md and the one-page offline index.html, summary first) and model card."""

__all__ = ['document', 'model_card', 'summary']

"""Sources, the index and its cohort rules, duplicates and altered copies, patient splits, the preprocess cache and the planted tag."""

__all__ = ['cache', 'cohort', 'confounder', 'copies', 'copy_store', 'dedupe', 'images', 'indexing', 'labels', 'paper_labels', 'preprocess', 'sources', 'splitting']

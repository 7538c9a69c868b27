"""Running the study: profiles and their progress, the headline views (show, diff), the CI gate and its spread, the ablation ladder, the GPU bundle, the stage dependency check, the matrix stages on a Ray cluster, where a run's time went."""

__all__ = ['ablation', 'ablation_table', 'bundle', 'deps', 'gate', 'ladder', 'paired', 'profiles', 'progress', 'scale',
           'show', 'spread', 'times']

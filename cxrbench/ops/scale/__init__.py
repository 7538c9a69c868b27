"""The pipeline beyond one process: its matrix stages as Ray tasks in worktrees sharing one DVC cache, merged through DVC's run-cache (``cxrbench scale``, docs/scale.md)."""

__all__ = ['cli', 'coordinator', 'plan', 'toy', 'worker']

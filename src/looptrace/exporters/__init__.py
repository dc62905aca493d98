"""Renderers: each reads a :class:`~looptrace.session.Session` and nothing else."""

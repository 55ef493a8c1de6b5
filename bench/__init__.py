"""Benchmarks: ``./dev bench`` (``python -m bench``) and a few standalone scripts.

Figures for notes and commit messages, never assertions: tests do not time anything.
"""

"""The write side of a study: ``nas search``'s driver (:mod:`runners.sweep.run`) and the Ray worker it drives.

Nothing here reads results back for people (that is :mod:`runners.analysis`), and nothing there writes a trial.
"""

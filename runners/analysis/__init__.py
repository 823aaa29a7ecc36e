"""The read side of a study: results, export, report, dashboard and its figures, proxy fidelity and calibration.

Nothing here drives a sweep (:mod:`runners.sweep`); fidelity and calibration retrain stored trials on Ray and store
their own results beside them, never trials.
"""

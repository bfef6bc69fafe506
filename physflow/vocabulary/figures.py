"""Figures an adapter declares for its arrays, as plain data.

The report draws what a run's adapter declares instead of knowing any code's array names, and it
reads the declaration from the adapter's class, so drawing needs neither the adapter's
construction (its checks read the target and the workflow's files) nor anything but the run
directory. The words sit on the ground floor because adapters write them and the report reads
them, and neither may import the other's floor for it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CurveFigure:
    """One array figure of the report: array ``y`` against array ``x`` (as stored in campaign.h5
    under ``tasks/<id>/``) for each of the best simulations, and the target file's arrays of the
    same names as a dashed black line; log-log, points with ``y > 0`` only, axes labelled
    ``"<label> [<the arrays' units>]"``."""

    #: The PNG's name in plots/ (without .png) and the figure's key in the report.
    name: str
    x: str
    y: str
    xlabel: str
    ylabel: str
    #: The caption under the figure in report.md and report.html (and its alt text).
    caption: str

"""Choice of the slices shown in preview.png."""

import numpy as np

from ctqa.reports.preview import representative_slices


def test_spans_worst_to_best():
    quality = np.array([0.5, 0.9, 0.1, 0.7, np.nan, 0.3, 0.6])
    shown = representative_slices(quality)
    assert 2 in shown and 1 in shown  # the worst and the best slice
    assert len(shown) == 4 and shown == sorted(shown) and 4 not in shown


def test_few_or_no_assessed_slices():
    assert representative_slices(np.array([0.4, 0.2])) == [0, 1]
    assert representative_slices(np.array([np.nan, np.nan, np.nan])) == [1]

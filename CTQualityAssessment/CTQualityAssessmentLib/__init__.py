"""Pure-Python core of the CTQualityAssessment 3D Slicer extension: CT I/O, quality maps, aggregation.

Nothing here imports Slicer, Qt or a GPU library: the Slicer module, the `ctqa` CLI and CTQualityTraining share it.
"""

__version__ = "0.1.0"

"""ctqa: the pure-Python core of the CTQualityAssessment 3D Slicer extension.

CT I/O, physics measures, learned models, tasks, aggregation, outputs and reports. Never imports slicer, qt, vtk or
CTQualityTraining; torch only inside ``ctqa.models`` (networks, checkpoints, inference). The Slicer module, the
``ctqa`` CLI and CTQualityTraining all import it. The command-line and file contract: docs/contract.md.
"""

__version__ = "0.2.0"

"""Slicer-side glue of the CTQualityAssessment module (may import slicer, qt, vtk): MRML conversion.

The pure core is the sibling package ``ctqa`` (Slicer puts the module folder on sys.path)."""

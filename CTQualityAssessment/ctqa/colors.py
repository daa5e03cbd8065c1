"""The quality colour scale, shared by preview.png (matplotlib) and the Slicer colour table (which has no matplotlib).

viridis sampled at 0, 0.1, ..., 1: perceptually uniform and colour-blind safe; dark violet = poor, yellow = good.
"""

QUALITY_COLOR_ANCHORS = (
    (0.2670, 0.0049, 0.3294), (0.2826, 0.1409, 0.4575), (0.2539, 0.2653, 0.5300), (0.2068, 0.3718, 0.5531),
    (0.1636, 0.4711, 0.5581), (0.1276, 0.5669, 0.5506), (0.1347, 0.6586, 0.5176), (0.2669, 0.7488, 0.4406),
    (0.4775, 0.8214, 0.3182), (0.7414, 0.8734, 0.1496), (0.9932, 0.9062, 0.1439),
)  # fmt: skip

"""3D connected components of a volume-sized mask labelled a slab at a time, numbered as one ndimage.label of the
whole volume would number them (the lung mask and the physics pass's body use it: no volume-sized label array)."""

from __future__ import annotations

import numpy as np


class SlabComponents:
    """3D components (6-connected, as ndimage.label) of a mask given slab by slab, numbered as ndimage.label numbers
    them on the whole volume (raster order of first voxel): each slab is labelled on its own (``add``), labels
    that touch across slab borders are merged (union-find), and ``finish`` maps every slab label to its component.
    """

    def __init__(self) -> None:
        self.offsets: list[int] = []  # first provisional id of each slab (ids are offset + slab label)
        self.sizes: list[np.ndarray] = []  # voxels per slab label (index 0: background)
        self.plane_counts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (plane, provisional id, voxels)
        self.planes = 0
        self.pairs: list[np.ndarray] = []  # (k, 2) provisional ids joined across a slab border
        self.total = 0
        self._last_plane: np.ndarray | None = None

    def add(self, labels: np.ndarray, count: int) -> None:
        """The slab labels (z, y, x) of the next slab (ndimage.label of it, count labels)."""
        offset = self.total
        self.offsets.append(offset)
        per_plane = np.stack([np.bincount(plane.ravel(), minlength=count + 1) for plane in labels])
        self.sizes.append(per_plane.sum(axis=0))
        planes, ids = np.nonzero(per_plane[:, 1:])
        self.plane_counts.append((planes + self.planes, ids + 1 + offset, per_plane[planes, ids + 1]))
        self.planes += len(labels)
        if self._last_plane is not None:
            joined = (self._last_plane > 0) & (labels[0] > 0)
            if joined.any():
                pairs = np.stack([self._last_plane[joined], labels[0][joined] + offset], axis=1)
                self.pairs.append(np.unique(pairs, axis=0))
        last = labels[-1].astype(np.int64)
        last[last > 0] += offset
        self._last_plane = last
        self.total += count

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(component of each provisional id (index 0 = background 0), voxels per component, largest in-plane area
        per component); components numbered 1.. in raster order of their first voxel."""
        parent = np.arange(self.total + 1)

        def root(node: int) -> int:
            while parent[node] != node:
                parent[node] = parent[parent[node]]
                node = parent[node]
            return node

        for pairs in self.pairs:
            for a, b in pairs.tolist():
                ra, rb = root(a), root(b)
                if ra != rb:  # the smaller id (the earlier first voxel) stays the root
                    parent[max(ra, rb)] = min(ra, rb)
        roots = parent
        while True:  # pointer jumping: every id to its tree's root
            jumped = roots[roots]
            if np.array_equal(jumped, roots):
                break
            roots = jumped
        _, component = np.unique(roots, return_inverse=True)  # root 0 -> 0; others ranked by their first voxel
        sizes = np.concatenate([size[1:] for size in self.sizes]) if self.sizes else np.zeros(0, np.int64)
        count = int(component.max()) if component.size else 0
        component_sizes = np.bincount(component[1:], weights=sizes, minlength=count + 1).astype(np.int64)
        # A component's area in a plane sums all its slab labels there (two arms of a U are two labels in a slab).
        component_areas = np.zeros(count + 1, dtype=np.int64)
        if self.plane_counts:
            planes, ids, voxels = (np.concatenate(parts) for parts in zip(*self.plane_counts))
            keys, where = np.unique(component[ids] * max(self.planes, 1) + planes, return_inverse=True)
            per_plane = np.bincount(where, weights=voxels).astype(np.int64)
            np.maximum.at(component_areas, keys // max(self.planes, 1), per_plane)
        return component, component_sizes, component_areas

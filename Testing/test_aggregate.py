"""Per-slice and per-ROI tables, including the real-data liver check."""

import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from ctqa.aggregate import lung_quality, region_statistics, roi_table, tabulate
from ctqa.io import read_volume
from ctqa.models.registry import resolve
from ctqa.physics.noise import analyse_noise
from ctqa.results import SLICE_COLUMNS, table_row
from ctqa.rois import load_rois, rois_from_labels
from ctqa.tasks import quality_map
from ctqa.volume import CTVolume


def _volume_and_maps():
    rng = np.random.default_rng(0)
    hu = rng.normal(40.0, 10.0, (3, 8, 10)).astype(np.float32)
    quality = rng.uniform(0.0, 1.0, hu.shape).astype(np.float32)
    noise = rng.uniform(5.0, 30.0, hu.shape).astype(np.float32)
    quality[:, :2] = np.nan  # outside the body
    noise[:, :2] = np.nan
    direction = (1, 0, 0, 0, 1, 0, 0, 0, -1)
    return CTVolume(hu, (0.5, 0.5, 2.5), (0.0, 0.0, 100.0), direction), quality, noise


def test_slice_table_rows_follow_geometry_and_match_numpy():
    volume, quality, noise = _volume_and_maps()
    rows = [table_row(row) for row in tabulate(volume, quality, noise).slices]
    assert [row["slice"] for row in rows] == [0, 1, 2]
    assert [row["z_mm"] for row in rows] == [100.0, 97.5, 95.0]  # z axis points down: direction[8] = -1
    assert set(rows[0]) == set(SLICE_COLUMNS)
    inside = quality[1][2:]
    assert rows[1]["voxels"] == inside.size
    assert rows[1]["quality_mean"] == pytest.approx(inside.mean(), rel=1e-6)
    assert rows[1]["quality_median"] == pytest.approx(np.median(inside), rel=1e-6)
    assert rows[1]["quality_p10"] == pytest.approx(np.percentile(inside, 10), rel=1e-6)
    assert rows[1]["noise_sd_hu"] == pytest.approx(np.median(noise[1][2:]), rel=1e-6)
    assert rows[1]["hu_mean"] == pytest.approx(volume.hu[1][2:].mean(), rel=1e-5)


def test_roi_table_marks_empty_and_outside_body_rows_and_reads_each_roi_in_its_window():
    volume, quality, noise = _volume_and_maps()
    lung_map = np.where(np.isnan(quality), np.nan, 1.0 - quality).astype(np.float32)
    lung = np.zeros(volume.shape, bool)
    lung[:, 6:8, 6:10] = True
    labels = np.zeros(volume.shape, np.uint8)
    labels[:, 4:6, 4:6] = 1  # inside the body
    labels[:, 0, :] = 2  # outside the body (NaN quality)
    labels[:, 5:8, 6:10] = 4  # 2 of its 3 rows in the lung mask: read in the lung window
    names = {1: "liver", 2: "table", 3: "spleen", 4: "lung lobe"}
    windows = {"soft_tissue": quality, "lung": lung_map}
    by_name = {
        row.name: table_row(row) for row in roi_table(volume, windows, lung, noise, rois_from_labels(labels, names))
    }
    assert by_name["liver"]["status"] == "ok" and by_name["liver"]["voxels"] == 12
    assert by_name["liver"]["window"] == "soft_tissue"
    assert by_name["liver"]["quality_mean"] == pytest.approx(quality[:, 4:6, 4:6].mean(), rel=1e-6)
    assert by_name["lung lobe"]["window"] == "lung"
    assert by_name["lung lobe"]["quality_mean"] == pytest.approx(lung_map[:, 5:8, 6:10].mean(), rel=1e-6)
    assert by_name["table"]["status"] == "outside body" and by_name["table"]["quality_mean"] is None
    assert by_name["table"]["window"] == ""
    assert by_name["spleen"]["status"] == "empty" and by_name["spleen"]["voxels"] == 0
    # A model without a lung window reads every ROI in the soft-tissue window.
    (lobe,) = roi_table(volume, {"soft_tissue": quality}, lung, noise, rois_from_labels(labels == 4, {1: "lobe"}))
    assert lobe.window == "soft_tissue" and lobe.stats.quality_mean == pytest.approx(quality[:, 5:8, 6:10].mean())


def test_lung_quality_splits_the_body_by_window():
    volume, quality, _ = _volume_and_maps()
    lung_map = np.where(np.isnan(quality), np.nan, 0.5 * quality).astype(np.float32)
    lung = np.zeros(volume.shape, bool)
    lung[:, 6:8] = True
    result = lung_quality({"soft_tissue": quality, "lung": lung_map}, lung)
    assert result.lung_voxels == lung.sum() and result.lung_window_hu == (-1350.0, 150.0)
    assert result.lung_quality_mean == pytest.approx(lung_map[lung].mean(), rel=1e-6)
    assert result.soft_tissue_quality_mean == pytest.approx(quality[:, 2:6].mean(), rel=1e-6)
    assert math.isnan(lung_quality({"soft_tissue": quality}, lung).lung_quality_mean)


def test_body_statistics_stream_slices_and_match_numpy():
    rng = np.random.default_rng(1)
    volume = CTVolume(rng.normal(40.0, 10.0, (4, 64, 64)), (0.5, 0.5, 2.5))
    quality = rng.uniform(0.0, 1.0, volume.shape).astype(np.float32)
    noise = rng.uniform(5.0, 30.0, volume.shape).astype(np.float32)
    quality[:, :20] = noise[:, :20] = np.nan  # outside the body
    streamed = tabulate(volume, quality, noise).body
    inside = np.isfinite(quality)
    direct = region_statistics(quality[inside], noise[inside], volume.hu[inside])
    assert streamed.quality_mean == pytest.approx(direct.quality_mean, rel=1e-9)
    assert streamed.hu_mean == pytest.approx(direct.hu_mean, rel=1e-9)
    for name in ("quality_median", "quality_p10"):  # histogram of 1e-4 bins
        assert getattr(streamed, name) == pytest.approx(getattr(direct, name), abs=2e-4)
    assert streamed.noise_sd_hu == pytest.approx(direct.noise_sd_hu, abs=0.02)
    assert math.isnan(tabulate(volume, np.full_like(quality, np.nan), noise).body.quality_mean)


def test_threaded_aggregation_equals_one_pass_over_the_slices():
    """tabulate (slice rows and the body's statistics) and lung_quality run slab by slab in threads (several slabs
    here, the last one short); their figures equal those of one pass over the slices in order, to the last bit."""
    rng = np.random.default_rng(2)
    volume = CTVolume(rng.normal(40.0, 10.0, (37, 40, 48)), (0.5, 0.5, 2.5))
    quality = rng.uniform(0.0, 1.0, volume.shape).astype(np.float32)
    noise = rng.uniform(5.0, 30.0, volume.shape).astype(np.float32)
    quality[:, :9] = noise[:, :9] = np.nan  # outside the body
    quality[5] = noise[5] = np.nan  # a slice without body
    lung_map = np.where(np.isnan(quality), np.nan, 0.5 * quality).astype(np.float32)
    lung = np.zeros(volume.shape, bool)
    lung[:, 20:30, 10:20] = True

    tables = tabulate(volume, quality, noise)
    rows = tables.slices
    for z, row in enumerate(rows):
        assert row.stats == region_statistics(quality[z].ravel(), noise[z].ravel(), volume.hu[z].ravel())
    assert [row.voxels for row in rows] == [int(np.isfinite(plane).sum()) for plane in quality]

    quality_sum = hu_sum = lung_sum = rest_sum = 0.0
    for z in range(volume.shape[0]):  # one pass, as the sums were made before the threads
        inside = np.isfinite(quality[z])
        quality_sum += float(quality[z][inside].sum(dtype=np.float64))
        hu_sum += float(volume.hu[z][inside].sum(dtype=np.float64))
        lung_sum += float(lung_map[z][lung[z] & inside].sum(dtype=np.float64))
        rest_sum += float(quality[z][inside & ~lung[z]].sum(dtype=np.float64))
    inside = np.isfinite(quality)
    body = tables.body
    assert body.quality_mean == quality_sum / inside.sum() and body.hu_mean == hu_sum / inside.sum()
    split = lung_quality({"soft_tissue": quality, "lung": lung_map}, lung)
    assert split.lung_voxels == (lung & inside).sum()
    assert split.lung_quality_mean == lung_sum / (lung & inside).sum()
    assert split.soft_tissue_quality_mean == rest_sum / (inside & ~lung).sum()


def test_labelmap_on_a_coarser_grid_is_resampled(tmp_path):
    volume = CTVolume(np.zeros((8, 16, 16), np.float32), (1.0, 1.0, 1.0), (10.0, 20.0, 30.0))
    coarse = np.zeros((4, 8, 8), np.uint8)
    coarse[1:3, 2:6, 2:6] = 7
    image = sitk.GetImageFromArray(coarse)
    image.SetSpacing((2.0, 2.0, 2.0))
    image.SetOrigin((10.5, 20.5, 30.5))  # voxel centres of the 2 mm grid sit between the 1 mm ones
    sitk.WriteImage(image, str(tmp_path / "labels.nrrd"))
    (roi,) = load_rois(tmp_path / "labels.nrrd", volume)
    assert roi.value == 7 and roi.name == "label 7"
    assert roi.voxel_count == (2 * 4 * 4) * 8  # 2x4x4 coarse voxels, each covering 2x2x2 fine ones


def test_liver_row_on_real_ct(shared_data):
    """Liver ROI on the TotalSegmentator example: HU mean 30-60, noise SD within 15 % of a hand-computed SD; the
    liver reads in the soft-tissue window, a lung lobe in the lung window."""
    volume = read_volume(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    masks = shared_data / "totalseg" / "example_seg_fast"
    liver_file = masks / "liver.nii.gz"
    analysis = analyse_noise(volume)
    result = quality_map.run(volume, resolve("quality_map", "physics"), analysis)
    rois = load_rois(liver_file, volume) + load_rois(masks / "lung_lower_lobe_right.nii.gz", volume)
    row, lobe = (table_row(r) for r in roi_table(volume, result.windows, result.lung, analysis.noise_sd, rois))
    assert lobe["window"] == "lung" and row["window"] == "soft_tissue"
    # the same noise weighs less in the wider lung window
    assert lobe["quality_mean"] > float(np.nanmean(result.windows["soft_tissue"][rois[1].box][rois[1].mask]))
    assert row["name"] == "liver" and row["status"] == "ok"
    assert 30.0 <= row["hu_mean"] <= 60.0
    liver = sitk.GetArrayFromImage(sitk.ReadImage(str(liver_file))) > 0
    core = ndimage.binary_erosion(liver, iterations=2)
    hand_sd = float(volume.hu[core].std())
    assert row["noise_sd_hu"] == pytest.approx(hand_sd, rel=0.15)

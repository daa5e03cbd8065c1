"""Batch example: assess many CT files in 3D Slicer and save maps and tables, one folder per input.

Run (the CTQualityAssessment module must be installed or on Slicer's module paths):

    Slicer --no-main-window --python-script Scripts/batch_assess.py -- \
        --input scans/*.nrrd --out results [--segmentation-dir segs] [--model physics] [--scene]

For each INPUT (any volume Slicer reads: NRRD, NIfTI, MHA, a DICOM file) it writes into OUT/<input name>/:
quality_map.nrrd (float32, 1 = best, NaN outside the body, input geometry), noise_map.nrrd (HU),
slices.csv, segments.csv (when SEGMENTATION_DIR holds <input name>.seg.nrrd), summary.json and, with --scene,
assessment.mrb (the whole scene). A failing input is reported and skipped; the exit status is 1 if any failed.
"""

import argparse
import glob
import json
import sys
from pathlib import Path

import slicer


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="batch_assess.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", nargs="+", required=True, help="CT files (glob patterns are expanded)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--segmentation-dir", help="folder of <input name>.seg.nrrd segmentations")
    parser.add_argument("--model", default="default", help="quality model (default: physics)")
    parser.add_argument("--scene", action="store_true", help="also save each scene as assessment.mrb")
    return parser.parse_args(argv[1:] if argv and argv[0] == "--" else argv)


def _stem(path: Path) -> str:
    name = path.name
    for extension in (".seg.nrrd", ".nii.gz", ".nrrd", ".nii", ".mha", ".dcm"):
        if name.lower().endswith(extension):
            return name[: -len(extension)]
    return path.stem


def assess_file(logic, path: Path, out: Path, segmentation_dir: Path | None, model: str, save_scene: bool) -> dict:
    """Assess one file into out/<name>/ and return its summary; the scene is cleared afterwards."""
    name = _stem(path)
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    try:
        volume = slicer.util.loadVolume(str(path), {"name": name, "show": False})
        segmentation = None
        if segmentation_dir is not None and (segmentation_dir / f"{name}.seg.nrrd").is_file():
            segmentation = slicer.util.loadSegmentation(str(segmentation_dir / f"{name}.seg.nrrd"))
        outputs = logic.process(volume, segmentationNode=segmentation, model=model, showResult=False)
        slicer.util.saveNode(outputs.quality_map, str(folder / "quality_map.nrrd"))
        slicer.util.saveNode(outputs.noise_map, str(folder / "noise_map.nrrd"))
        slicer.util.saveNode(outputs.slice_table, str(folder / "slices.csv"))
        if outputs.segment_table is not None:
            slicer.util.saveNode(outputs.segment_table, str(folder / "segments.csv"))
        (folder / "summary.json").write_text(json.dumps(outputs.summary, indent=2) + "\n", encoding="utf-8")
        if save_scene:
            slicer.mrmlScene.WriteToMRB(str(folder / "assessment.mrb"))
        return outputs.summary
    finally:
        slicer.mrmlScene.Clear()


def main(argv: list[str]) -> int:
    from ctqa.errors import InputError
    from CTQualityAssessment import CTQualityAssessmentLogic

    args = _arguments(argv)
    paths = [Path(p) for pattern in args.input for p in (sorted(glob.glob(pattern)) or [pattern])]
    out = Path(args.out)
    segmentation_dir = Path(args.segmentation_dir) if args.segmentation_dir else None
    logic = CTQualityAssessmentLogic()
    failed = 0
    for path in paths:
        try:
            summary = assess_file(logic, path, out, segmentation_dir, args.model, args.scene)
        except (InputError, RuntimeError, OSError) as error:
            failed += 1
            print(f"{path}: failed: {error}", file=sys.stderr)
            continue
        score, gnl = summary["global_quality_score"], summary["gnl_hu"]
        print(
            f"{path}: quality {score if score is None else round(score, 3)}, "
            f"GNL {gnl if gnl is None else round(gnl, 1)} HU"
        )
    print(f"{len(paths) - failed} of {len(paths)} inputs assessed; results in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    slicer.util.exit(main(sys.argv[1:]))

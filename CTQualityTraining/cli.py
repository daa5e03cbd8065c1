"""`ctqa-train`: the training side's command line."""

from __future__ import annotations

import argparse
import sys

from CTQualityAssessmentLib.errors import exit_status

from . import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctqa-train",
        description="Training side of CT quality assessment: labels, datasets and models for ctqa.",
    )
    parser.add_argument("--version", action="version", version=f"ctqa-train {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    labels = commands.add_parser(
        "labels",
        help="SSIM label map of a low-dose CT against its full-dose reference (Noise2Quality settings)",
        description="Write the Noise2Quality training label: the SSIM map of INPUT against --reference "
        "(Gaussian 11x11, sigma 1.5, K1 0.01, K2 0.03, on the -160..240 HU window), with INPUT's geometry.",
    )
    labels.add_argument("input", metavar="INPUT", help="low-dose CT (DICOM folder or file, NIfTI, NRRD, MHA)")
    labels.add_argument("--reference", required=True, metavar="REF", help="full-dose CT on the same grid")
    labels.add_argument("--out", required=True, metavar="FILE", help="label map to write (.nrrd, .nii.gz, .mha)")
    simulate = commands.add_parser(
        "simulate",
        help="build a sharded training set of simulated low-dose / kernel CT slices (resumable)",
        description="Simulate doses (projection domain; image domain for quarter/full-dose pairs) and kernels on "
        "every source and write DIR/manifest.json and DIR/shards/*.npz. Sources: volume files or DICOM folders, "
        "folders of Mayo .npy pairs, the LDCTIQAC2023 layout (image/*.tif + train.json). Rerun to resume.",
    )
    simulate.add_argument("--input", required=True, nargs="+", metavar="PATH", help="sources (see above)")
    simulate.add_argument("--out", required=True, metavar="DIR", help="dataset folder (created)")
    # Defaults live in datasets.build_dataset (options left out are not passed), so --help needs no torch import.
    simulate.add_argument("--doses", type=float, nargs="+", metavar="D",
                          help="dose fractions in (0, 1] (default: 1 0.75 0.5 0.25 0.1 0.05)")
    simulate.add_argument("--kernels", nargs="+", metavar="K", help="native, sharp, smooth (default: all three)")
    simulate.add_argument("--views", type=int, help="projection angles over 180 deg (default: 720); fewer gives "
                          "sparse-view streaks with the sharp/smooth kernels")
    simulate.add_argument("--slices-per-volume", type=int, metavar="N", help="evenly spaced slices (default: 8)")
    simulate.add_argument("--electronic-noise", type=float, metavar="COUNTS",
                          help="SD of detector electronic noise in counts per bin and view (default: 0)")
    simulate.add_argument("--pixel-mm", type=float, help="pixel size of .npy/.tif sources in mm (default: 0.74)")
    simulate.add_argument("--seed", type=int, help="base random seed (default: 0)")
    simulate.add_argument("--device", help="torch device, e.g. cpu or cuda (default: cpu)")
    return parser


def _labels(args: argparse.Namespace) -> None:
    from CTQualityAssessmentLib.io import read_volume, write_map
    from CTQualityAssessmentLib.pipeline import check_reference
    from CTQualityAssessmentLib.ssim import ssim_map

    volume = read_volume(args.input)
    reference = read_volume(args.reference)
    check_reference(volume, reference)
    label = ssim_map(volume.hu, reference.hu)
    write_map(label, volume, args.out)
    print(f"wrote {args.out}: mean SSIM {float(label.mean()):.4f}")


def _simulate(args: argparse.Namespace) -> None:
    from .datasets import build_dataset

    options = ("doses", "kernels", "views", "slices_per_volume", "electronic_noise", "seed", "pixel_mm", "device")
    given = {name: getattr(args, name) for name in options if getattr(args, name) is not None}
    manifest = build_dataset(args.input, args.out, **given)
    print(f"wrote {args.out}: {len(manifest['sources'])} sources, manifest {args.out}/manifest.json")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `ctqa-train`; returns the exit status (2 on bad input, with one line on stderr)."""
    args = _parser().parse_args(argv)
    return exit_status("ctqa-train", lambda: {"labels": _labels, "simulate": _simulate}[args.command](args))


if __name__ == "__main__":
    sys.exit(main())

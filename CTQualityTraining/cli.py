"""`ctqa-train`: the training side's command line."""

from __future__ import annotations

import argparse
import sys

from CTQualityAssessmentLib.errors import InputError

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


def main(argv: list[str] | None = None) -> int:
    """Entry point of `ctqa-train`; returns the exit status (2 on bad input, with one line on stderr)."""
    args = _parser().parse_args(argv)
    try:
        {"labels": _labels}[args.command](args)
    except InputError as error:
        print(f"ctqa-train: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`ctqa-train`: the training side's command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ctqa.errors import InputError, exit_status
from ctqa.models.registry import MODELS_DIR
from ctqa.outputs import written_whole

from . import __version__
from .files import check_output_file


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
    simulate.add_argument(
        "--doses",
        type=float,
        nargs="+",
        metavar="D",
        help="dose fractions in (0, 1] (default: 1 0.75 0.5 0.25 0.1 0.05)",
    )
    simulate.add_argument(
        "--kernels", nargs="+", metavar="K", help="native, sharp, smooth, lung (default: native sharp smooth)"
    )
    simulate.add_argument(
        "--views",
        type=int,
        help="projection angles over 180 deg (default: 720); fewer gives "
        "sparse-view streaks with the sharp/smooth kernels",
    )
    simulate.add_argument("--slices-per-volume", type=int, metavar="N", help="evenly spaced slices (default: 8)")
    simulate.add_argument(
        "--electronic-noise",
        type=float,
        metavar="COUNTS",
        help="SD of detector electronic noise in counts per bin and view (default: 0)",
    )
    simulate.add_argument("--pixel-mm", type=float, help="pixel size of .npy/.tif sources in mm (default: 0.74)")
    simulate.add_argument("--seed", type=int, help="base random seed (default: 0)")
    simulate.add_argument(
        "--noise-model",
        choices=("insert", "acquire"),
        help="insert: extra noise on the image as it is (default); acquire: one photon budget for every kernel, "
        "the original noise removed first (series of one acquisition at several kernels, projection.py)",
    )
    simulate.add_argument("--device", help="torch device, e.g. cpu or cuda (default: cpu)")
    simulate.add_argument(
        "--split",
        nargs="+",
        metavar="GROUP=SPLIT",
        dest="split_groups",
        help="put a patient/volume group in train, val or test (a volume's group is its file or "
        "folder name without .gz; Mayo pairs: the patient, e.g. L506); other groups by hash",
    )
    maps = commands.add_parser(
        "maps",
        help="train a quality-map network (one N2Q variant) on a simulated dataset",
        description="Train one Noise2Quality variant on random patches of DATA's train split (flips, 90 degree "
        "rotations), validating on its val split; writes checkpoints (safetensors + JSON card), the trainer state "
        "and TensorBoard scalars (OUT/tensorboard) in OUT. --resume continues OUT's last checkpoint.",
    )
    maps.add_argument("--data", required=True, metavar="DIR", help="dataset folder from ctqa-train simulate")
    maps.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (created)")
    maps.add_argument("--variant", default="N2Q", help="AE, RED-CNN, U-Net, U-HPF, U-Con, U-SSL or N2Q (default)")
    maps.add_argument("--steps", type=int, default=2000, help="optimizer steps (default: 2000)")
    maps.add_argument("--batch", type=int, default=8, help="patches per step (default: 8)")
    maps.add_argument("--patch", type=int, default=128, help="patch side in pixels (default: 128)")
    maps.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default: 2e-3)")
    maps.add_argument("--alpha", type=float, default=0.1, help="weight of the dose loss terms (default: 0.1)")
    maps.add_argument("--seed", type=int, default=0, help="seed of weights, patches and augmentation (default: 0)")
    maps.add_argument(
        "--checkpoint-every",
        type=int,
        default=500,
        metavar="N",
        help="steps between checkpoints and validations (default: 500)",
    )
    maps.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda (default: auto)")
    maps.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    maps.add_argument(
        "--noise-gain",
        type=float,
        nargs=2,
        default=(1.0, 1.0),
        metavar=("LOW", "HIGH"),
        help="scale the inserted noise by a log-uniform gain in [LOW, HIGH], label and dose recomputed "
        "(default: 1 1 = off)",
    )
    maps.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads for torch (default: torch's choice; 1 avoids thrashing on a shared CPU)",
    )
    evaluate = commands.add_parser(
        "evaluate-maps",
        help="Noise2Quality Table 1 (SSIM / MSE / NRMSE of predicted vs true maps) for trained runs",
        description="Evaluate each run's final checkpoint on DATA's held-out test split and on real Mayo "
        "quarter/full-dose pairs; check that the predicted map's mean rises with simulated dose. Writes Markdown "
        "(.md) or JSON (.json) by the suffix of --out.",
    )
    evaluate.add_argument("--data", required=True, metavar="DIR", help="dataset folder from ctqa-train simulate")
    evaluate.add_argument("--runs", required=True, nargs="+", metavar="RUN_DIR", help="run folders of ctqa-train maps")
    evaluate.add_argument("--mayo", metavar="DIR", help="folder of Mayo pairs <case>_input.npy / <case>_target.npy")
    evaluate.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    evaluate.add_argument("--out", required=True, metavar="FILE", help="report to write (.md or .json)")
    series = commands.add_parser(
        "series",
        help="train the Chest CT-IQA series classifier (window / dose classes, SNR, BRISQUE) on a simulated dataset",
        description="Train the 3D multitask series network on DATA's train split (series = source x kernel x dose "
        "of a dataset simulated with kernels native smooth lung and all slices of each source), fit the physics "
        "classifier and the eq. 4 score on the same split, evaluate on the test split; writes RUN_DIR/model.json "
        "(+ .safetensors) and RUN_DIR/evaluation.json.",
    )
    series.add_argument("--data", required=True, metavar="DIR", help="dataset folder from ctqa-train simulate")
    series.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (created)")
    series.add_argument("--steps", type=int, default=1500, help="optimizer steps (default: 1500)")
    series.add_argument("--batch", type=int, default=24, help="stacks per step (default: 24)")
    series.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default: 2e-3)")
    series.add_argument("--variant", default="separate", help="separate (three FC layers per head, default) or shared")
    series.add_argument(
        "--loss-weights",
        type=float,
        nargs=4,
        default=(1.0, 1.0, 0.3, 0.3),
        metavar=("W", "D", "S", "B"),
        help="lambda1..4 of the window, dose, SNR and BRISQUE losses (default: 1 1 0.3 0.3)",
    )
    series.add_argument("--seed", type=int, default=0, help="seed of weights, stacks and augmentation (default: 0)")
    series.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's choice)")
    evaluate_series = commands.add_parser(
        "evaluate-series",
        help="accuracy / precision / recall / F1 per class head and RMSE / SROCC per regression head of a series "
        "model and of its physics classifier on a held-out split",
    )
    evaluate_series.add_argument("--data", required=True, metavar="DIR", help="dataset folder from ctqa-train simulate")
    evaluate_series.add_argument("--model", required=True, metavar="CHECKPOINT", help="series model (X.json)")
    evaluate_series.add_argument("--split", default="test", help="train, val or test (default: test)")
    evaluate_series.add_argument("--out", metavar="FILE", help="also write the results (.md or .json)")
    fit = commands.add_parser(
        "fit-chest-score",
        help="refit the eq. 4 chest score of a series model to your scores (CSV series_id,score)",
        description="series_id: an output folder of `ctqa assess` made with this series model (absolute or "
        "relative to the CSV). Fits score = b0 + b1 P(lung) + b2 P(low dose) + b3 SNR + b4 BRISQUE by least squares "
        "and writes the model with the new fit to --out.",
    )
    fit.add_argument("--scores", required=True, metavar="CSV", help="CSV with columns series_id,score")
    fit.add_argument("--model", required=True, metavar="CHECKPOINT", help="series model (X.json)")
    fit.add_argument("--out", required=True, metavar="CHECKPOINT", help="refitted model to write (X, no suffix)")
    score_data = commands.add_parser(
        "score-data",
        help="build the global-score dataset: simulated dose x view grid with a surrogate 0-4 score, LDCTIQAC2023 "
        "images, unlabelled real slices (resumable)",
        description="Degrade real full-dose slices on a grid of dose fractions x view counts (projection simulation, "
        "smooth kernel, 512x512 slices), score each by the surrogate (mean SSIM in W350/L40 against the full-dose "
        "720-view image, linear to 0-4), keep every real slice as acquired as unlabelled, import LDCTIQAC2023 folders "
        "(image/*.tif + train.json) with their scores; write DIR/manifest.json and DIR/shards/*.npz and print the "
        "score histogram per dose and view count. Rerun to resume.",
    )
    score_data.add_argument(
        "--input",
        required=True,
        nargs="+",
        metavar="PATH",
        help="sources to simulate (as simulate) or LDCTIQAC2023 folders",
    )
    score_data.add_argument("--unlabelled", nargs="+", metavar="PATH", help="sources for the unlabelled pool only")
    score_data.add_argument("--out", required=True, metavar="DIR", help="dataset folder (created)")
    # Defaults live in score_data.build_score_dataset (options left out are not passed), so --help needs no torch.
    score_data.add_argument(
        "--doses",
        type=float,
        nargs="+",
        metavar="D",
        help="dose fractions (photons per view) in (0, 1] (default: 1 0.75 0.5 0.35 0.25 0.15 0.1 0.05)",
    )
    score_data.add_argument(
        "--views",
        type=int,
        nargs="+",
        metavar="V",
        help="view counts over 180 deg, 8..720; 720 is the full acquisition (default: 720 512 360 256 180 128 64)",
    )
    score_data.add_argument(
        "--slices-per-volume", type=int, metavar="N", help="evenly spaced slices simulated per source (default: 4)"
    )
    score_data.add_argument(
        "--unlabelled-per-volume", type=int, metavar="N", help="evenly spaced slices kept as acquired (default: all)"
    )
    score_data.add_argument(
        "--ssim-range",
        type=float,
        nargs=2,
        metavar=("FLOOR", "CEILING"),
        help="mean SSIM mapped to score 0 and to score 4 (default: 0.2 1)",
    )
    score_data.add_argument("--pixel-mm", type=float, help="pixel size of .npy/.tif sources in mm (default: 0.74)")
    score_data.add_argument(
        "--grid-mm",
        type=float,
        metavar="MM",
        help="the physical grid: slices resampled to MM pixels and placed in a 512 x 512 canvas centred on the body "
        "before the simulation (score_network.score_canvas; e.g. 0.7); default: the whole slice padded to a square "
        "and resized to 512 x 512 (the old convention)",
    )
    score_data.add_argument("--seed", type=int, help="base random seed (default: 0)")
    score_data.add_argument("--device", help="torch device, e.g. cpu or cuda (default: cpu)")
    score_data.add_argument(
        "--split",
        nargs="+",
        metavar="GROUP=SPLIT",
        dest="split_groups",
        help="put a patient/volume group in train, val or test (default: score_data.DEFAULT_SPLIT_GROUPS for the "
        "shared data, other groups by hash, val and test given a patient of every collection of >= 3)",
    )
    score = commands.add_parser(
        "score",
        help="train a global 0-4 score network (MD-IQA, TFKT or a CNN baseline) on a score dataset",
        description="Train on DATA's scored train slices (whole slices in W350/L40, rotations and flips), validating "
        "on its val split. --teachers turns on MD-IQA's semi-supervised step: the teachers' ensemble pseudo-labels "
        "the unlabelled slices and a student trains jointly with an EMA teacher. Writes RUN_DIR/model.json "
        "(+ .safetensors) and the trainer state; --resume continues RUN_DIR's last checkpoint.",
    )
    score.add_argument("--data", required=True, metavar="DIR", help="dataset folder from ctqa-train score-data")
    score.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (created)")
    score.add_argument("--backbone", default="mdiqa", choices=("cnn", "tfkt", "mdiqa"), help="default: mdiqa")
    score.add_argument(
        "--head",
        default="distribution",
        choices=("distribution", "regression"),
        help="MD head or plain regression (default: distribution)",
    )
    score.add_argument("--steps", type=int, default=1500, help="optimizer steps (default: 1500)")
    score.add_argument("--batch", type=int, default=8, help="slices per step (default: 8)")
    score.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: 1e-3)")
    score.add_argument("--beta", type=float, default=0.1, help="weight of the KL term (default: 0.1)")
    score.add_argument("--seed", type=int, default=0, help="seed of weights, batches and augmentation (default: 0)")
    score.add_argument("--checkpoint-every", type=int, default=250, metavar="N", help="default: 250")
    score.add_argument(
        "--teachers",
        nargs="+",
        default=(),
        metavar="CHECKPOINT",
        help="supervised models whose ensemble pseudo-labels the unlabelled slices (semi-supervised)",
    )
    score.add_argument("--ema", type=float, default=0.997, help="EMA teacher decay alpha (default: 0.997)")
    score.add_argument(
        "--pretrain-steps",
        type=int,
        default=0,
        metavar="N",
        help="TFKT phase one: steps training the CNN branch alone first (default: 0)",
    )
    score.add_argument("--pretrained", metavar="FILE", help="local backbone weights (.safetensors) to start from")
    score.add_argument("--init", metavar="CHECKPOINT", help="score model to fine-tune (e.g. the bundled default)")
    score.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda (default: auto)")
    score.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    score.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's choice)")
    ablation = commands.add_parser(
        "score-ablation",
        help="train and compare the score variants (regression vs MD head, semi-supervision, CNN vs TFKT vs MD-IQA)",
        description="Train every variant of CTQualityTraining.score.ABLATION into RUNS (finished runs are reused, "
        "interrupted ones resumed) and write the agreement table on the held-out split to --out (.md).",
    )
    ablation.add_argument("--data", required=True, metavar="DIR", help="dataset folder from ctqa-train score-data")
    ablation.add_argument("--runs", required=True, metavar="DIR", help="folder of the runs (created)")
    ablation.add_argument("--steps", type=int, default=1500, help="optimizer steps per run (default: 1500)")
    ablation.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    ablation.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's choice)")
    ablation.add_argument("--out", required=True, metavar="FILE", help="Markdown table to write (.md)")
    calibrate = commands.add_parser(
        "calibrate-score",
        help="fit a monotone map from a score model to your radiologists' scores (CSV path,score)",
        description="Score each rated image with --model, fit the ratings on the raw scores by isotonic regression "
        "and write the model with the calibration to --out (same weights; the card holds the knots).",
    )
    calibrate.add_argument("--ratings", required=True, metavar="CSV", help="CSV with columns path,score (0-4)")
    calibrate.add_argument("--model", required=True, metavar="CHECKPOINT", help="score model (X.json or a name)")
    calibrate.add_argument("--out", required=True, metavar="CHECKPOINT", help="calibrated model to write (X)")
    calibrate.add_argument("--scaling", help="how the rated images' values become HU (ctqa assess --scaling)")
    denoise_data = commands.add_parser(
        "denoise-data",
        help="build a denoising dataset: simulated low-dose / full-dose pairs, or low-dose slices alone (resumable)",
        description="Lower real slices to each dose (projection simulation, per kernel; the clean image is the slice "
        "or the kernel's full-dose re-reconstruction), keep Mayo quarter/full pairs as real pairs, or with --as-is "
        "keep the slices as acquired with no clean image (for --method neighbor2neighbor). Writes DIR/manifest.json "
        "and DIR/shards/*.npz; rerun to resume.",
    )
    denoise_data.add_argument("--input", required=True, nargs="+", metavar="PATH", help="sources (as simulate)")
    denoise_data.add_argument("--out", required=True, metavar="DIR", help="dataset folder (created)")
    denoise_data.add_argument(
        "--doses", type=float, nargs="+", metavar="D", default=(0.05, 0.1, 0.25, 0.5), help="default: 0.05 0.1 0.25 0.5"
    )
    denoise_data.add_argument(
        "--kernels", nargs="+", metavar="K", default=("native", "sharp"), help="default: native sharp"
    )
    denoise_data.add_argument("--slices-per-volume", type=int, default=6, metavar="N", help="default: 6")
    denoise_data.add_argument("--as-is", action="store_true", help="keep the slices as acquired, no clean images")
    denoise_data.add_argument("--pixel-mm", type=float, help="pixel size of .npy sources in mm (default: 0.74)")
    denoise_data.add_argument("--seed", type=int, default=0, help="default: 0")
    denoise = commands.add_parser(
        "denoise",
        help="train a denoiser (RED-CNN family): supervised on simulated pairs or Neighbor2Neighbor on low dose alone",
        description="Train on DATA's train split (random patches, rotations and flips), validating PSNR on its val "
        "pairs. --method neighbor2neighbor reads no clean image for training. Writes RUN_DIR/model.json "
        "(+ .safetensors) and the trainer state; --resume continues RUN_DIR's last checkpoint.",
    )
    denoise.add_argument("--data", required=True, metavar="DIR", help="dataset folder from ctqa-train denoise-data")
    denoise.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (created)")
    denoise.add_argument(
        "--method", default="supervised", choices=("supervised", "neighbor2neighbor"), help="default: supervised"
    )
    denoise.add_argument("--width", type=int, default=64, help="channels of the RED-CNN (default: 64)")
    denoise.add_argument("--space-to-depth", type=int, default=2, help="input folding factor (default: 2)")
    denoise.add_argument(
        "--nonlocal-window", type=int, default=0, metavar="N", help="non-local attention window, 0 = none (default: 0)"
    )
    denoise.add_argument("--steps", type=int, default=3000, help="optimizer steps (default: 3000)")
    denoise.add_argument("--batch", type=int, default=16, help="patches per step (default: 16)")
    denoise.add_argument("--patch", type=int, default=64, help="patch side in pixels (default: 64)")
    denoise.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default: 5e-4)")
    denoise.add_argument(
        "--noise-gain", type=float, nargs=2, default=(0.7, 1.4), metavar=("LOW", "HIGH"), help="default: 0.7 1.4"
    )
    denoise.add_argument("--gamma", type=float, default=2.0, help="Neighbor2Neighbor regulariser weight (default: 2)")
    denoise.add_argument(
        "--loss",
        default="relative",
        choices=("relative", "mse"),
        help="supervised loss: each patch's MSE over its input's, or the plain MSE (default: relative)",
    )
    denoise.add_argument("--init", metavar="CHECKPOINT", help="denoiser of the same architecture to start from")
    denoise.add_argument(
        "--min-body", type=float, default=0.1, help="least body share of a patch, 0 = uniform (default: 0.1)"
    )
    denoise.add_argument("--seed", type=int, default=0, help="default: 0")
    denoise.add_argument("--checkpoint-every", type=int, default=500, metavar="N", help="default: 500")
    denoise.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda (default: auto)")
    denoise.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    denoise.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's choice)")
    export = commands.add_parser(
        "export",
        help="bundle a run's final checkpoint as a named model (weights, cards, manifest with sha256)",
        description="Write NAME.safetensors, NAME.json, NAME.md and the manifest entry into the models folder.",
    )
    export.add_argument("run", metavar="RUN_DIR", help="run folder of ctqa-train maps or ctqa-train series")
    export.add_argument("--name", required=True, help="model name, e.g. n2q_default")
    export.add_argument(
        "--models-dir", metavar="DIR", help="models folder (default: the module's CTQualityAssessment/Resources/Models)"
    )
    export.add_argument("--default", action="store_true", help="make it the manifest's default model")
    export.add_argument("--reproduce", metavar="COMMAND", help="command that rebuilds the model, for the cards")
    denoise_eval = commands.add_parser(
        "denoise-eval",
        help="PSNR / SSIM / noise / MTF50 of denoisers on real Mayo quarter/full-dose pairs, beside NLM and BM3D",
        description="One Markdown table (FILE.md, and FILE.json with per-pair values): quarter dose, full dose, "
        "scikit-image non-local means and BM3D (oracle-tuned on the pairs) and each --model; and whether the learned "
        "quality map of each image claims more than its true SSIM map against full dose.",
    )
    denoise_eval.add_argument("--pairs", required=True, metavar="DIR", help="folder of Mayo <case>_input/target.npy")
    denoise_eval.add_argument(
        "--model", nargs="+", default=[], metavar="NAME_OR_CKPT", help="denoise models: bundled names or X.json"
    )
    denoise_eval.add_argument("--label", nargs="+", default=[], metavar="NAME", help="row names of the models")
    denoise_eval.add_argument("--pixel-mm", type=float, help="pixel size of the .npy pairs in mm (default: 0.74)")
    denoise_eval.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    denoise_eval.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's)")
    denoise_eval.add_argument("--no-bm3d", action="store_true", help="leave out the BM3D baseline")
    denoise_eval.add_argument(
        "--val-data",
        metavar="DIR",
        help="also compare the methods on the simulated val pairs of this denoising dataset (in-domain check)",
    )
    denoise_eval.add_argument(
        "--val-dose", type=float, nargs="+", default=[0.25], metavar="F", help="dose fractions of that check (0.25)"
    )
    denoise_eval.add_argument(
        "--self-ensemble", action="store_true", help="add a row per model: the mean over 8 rotations and flips"
    )
    denoise_eval.add_argument("--out", required=True, metavar="FILE.md", help="report to write (.md; .json beside it)")
    features = commands.add_parser(
        "score-features",
        help="fit the physics-feature 0-4 score (noise and NPS texture on a 0.7 mm grid) on real Mayo dose pairs",
        description="Full, quarter, smoothed and (with --denoise-model) denoised versions of every pair of "
        "mayo_ldct/pairs.csv, scored by the surrogate (SSIM against the full dose); writes OUT.json + "
        "OUT.safetensors (CTQualityTraining/score_features.py).",
    )
    features.add_argument(
        "--mayo", required=True, metavar="DIR", help="folder with pairs.csv (../shared/data/mayo_ldct)"
    )
    features.add_argument("--val-patients", nargs="+", default=["L286"], metavar="ID", help="held out (L286)")
    features.add_argument("--denoise-model", metavar="NAME_OR_CKPT", help="add each quarter dose denoised by it")
    features.add_argument(
        "--out", required=True, metavar="PATH", help="checkpoint to write (PATH.json, PATH.safetensors)"
    )
    validate = commands.add_parser(
        "validate-real",
        help="the real-data validation table: dose pairs, reader study, invariance, demo ramp",
        description="Runs the product (ctqa.pipeline.assess) on every real check in ../shared/data and writes one "
        "Markdown table per score model (CTQualityTraining/validate_real.py).",
    )
    validate.add_argument("--data", default="../shared/data", metavar="DIR", help="shared data folder")
    validate.add_argument(
        "--score-model", nargs="+", default=["default"], metavar="NAME_OR_CKPT", help="score models to compare"
    )
    validate.add_argument("--model", default="default", metavar="NAME_OR_CKPT", help="quality-map model (default)")
    validate.add_argument(
        "--map-model", nargs="+", metavar="NAME_OR_CKPT", help="more quality-map models for the map table"
    )
    validate.add_argument(
        "--hybrid", action="store_true", help="add a column: the mean of the first two score models' scores"
    )
    validate.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's)")
    validate.add_argument("--out", required=True, metavar="FILE.md", help="table to write (.md; .json beside it)")
    ceiling = commands.add_parser(
        "reader-ceiling",
        help="how far a score trained on dose pairs can agree with the reader study (ceilings, oracles)",
        description="Full-reference SSIM, single no-reference features and reader-trained oracles (leave one set "
        "out) against the radiologists of reader_study/abdomen (CTQualityTraining/reader_ceiling.py).",
    )
    ceiling.add_argument("--data", default="../shared/data", metavar="DIR", help="shared data folder")
    ceiling.add_argument("--out", required=True, metavar="FILE.md", help="table to write")
    calibrate_map = commands.add_parser(
        "calibrate-map",
        help="fit the per-window calibration of the median-SSIM or denoised-SSIM quality map on real dose pairs",
        description="Fits the map to the true SSIM map (against the real full dose), per window, on the real pairs of "
        "L096, L143 and L192: median writes the bundled median_ssim calibration (card, weights, manifest entry), "
        "denoised prints its affine (intercept, slope) pairs as JSON (CTQualityTraining/map_calibration.py).",
    )
    calibrate_map.add_argument("--data", default="../shared/data", metavar="DIR", help="shared data folder")
    calibrate_map.add_argument("--method", choices=("median", "denoised"), default="median", help="map to calibrate")
    calibrate_map.add_argument(
        "--models-dir",
        default=str(MODELS_DIR),
        metavar="DIR",
        help="where the median calibration is written (default: the bundled models)",
    )
    series_real = commands.add_parser(
        "series-real",
        help="the series panel's window and dose calls on every real kernel and dose case of the shared data",
        description="Window truth from DICOM kernel names, dose truth from the Mayo pairs and CTDIvol; scores the "
        "card's physics classifier and the window model refitted leaving one patient out; --refit writes that window "
        "model (fitted on all cases) into the card (CTQualityTraining/series_real.py).",
    )
    series_real.add_argument("--data", default="../shared/data", metavar="DIR", help="shared data folder")
    series_real.add_argument("--card", required=True, metavar="CARD.json", help="series model card")
    series_real.add_argument("--out", required=True, metavar="FILE.md", help="table to write (.json beside it)")
    series_real.add_argument("--refit", action="store_true", help="write the refitted window model into the card")
    return parser


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _labels(args: argparse.Namespace) -> None:
    from ctqa.geometry import reference_on_grid
    from ctqa.io import WRITABLE_EXTENSIONS, read_volume, write_map

    from .labels import ssim_labels

    out = Path(args.out)
    for role, path in (("INPUT", args.input), ("--reference", args.reference)):
        if out.exists() and Path(path).exists() and out.resolve() == Path(path).resolve():
            raise InputError(f"{args.out}: --out is the {role} file; it would be overwritten")
    if not args.out.lower().endswith(WRITABLE_EXTENSIONS):
        raise InputError(f"{args.out}: unsupported label format; use one of {', '.join(WRITABLE_EXTENSIONS)}")
    check_output_file(out)
    volume = read_volume(args.input)
    reference = reference_on_grid(read_volume(args.reference), volume)
    label = ssim_labels(volume.hu, reference, args.input)
    with written_whole(out) as partial:
        write_map(label, volume, partial)
    print(f"wrote {args.out}: mean SSIM {float(label.mean()):.4f}")


def _pairs(items: list[str], option: str) -> dict[str, str]:
    """{KEY: VALUE} from KEY=VALUE items; InputError for an item without "="."""
    pairs = {}
    for item in items:
        key, sep, value = item.rpartition("=")
        if not sep or not key:
            raise InputError(f"{option} expects KEY=VALUE items, got {item!r}")
        pairs[key] = value
    return pairs


def _simulate(args: argparse.Namespace) -> None:
    from .datasets import build_dataset

    options = (
        "doses",
        "kernels",
        "views",
        "slices_per_volume",
        "electronic_noise",
        "seed",
        "pixel_mm",
        "device",
        "noise_model",
    )
    given = {name: getattr(args, name) for name in options if getattr(args, name) is not None}
    if args.split_groups:
        given["split_groups"] = _pairs(args.split_groups, "--split")
    manifest = build_dataset(args.input, args.out, progress=sys.stderr.isatty(), **given)
    print(f"wrote {args.out}: {len(manifest['sources'])} sources, manifest {args.out}/manifest.json")


def _maps(args: argparse.Namespace) -> None:
    from .trainer import Trainer, TrainSettings

    _set_threads(args.threads)
    settings = TrainSettings(
        data=args.data,
        variant=args.variant,
        steps=args.steps,
        batch=args.batch,
        patch=args.patch,
        lr=args.lr,
        alpha=args.alpha,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        noise_gain=tuple(args.noise_gain),
    )
    trainer = Trainer(settings, args.out, device=args.device)
    if args.resume:
        trainer.resume()
    card = trainer.run()
    metrics = ", ".join(f"{key} {value:.4f}" for key, value in card["metrics"].items())
    print(
        f"wrote {args.out}/model.safetensors after {trainer.step} steps ({trainer.elapsed_s / 60:.1f} min); "
        f"val: {metrics or 'no val split'}"
    )


def _evaluate_maps(args: argparse.Namespace) -> None:
    import json
    import shlex

    from .evaluate import evaluate_runs, markdown

    if not args.out.endswith((".md", ".json")):
        raise InputError(f"{args.out}: --out must end in .md or .json")
    check_output_file(args.out)
    results = evaluate_runs(args.data, args.runs, args.mayo, args.device)
    command = shlex.join(["ctqa-train", *args.argv])
    if args.out.endswith(".json"):
        report = json.dumps({"command": command, **results}, indent=2) + "\n"
    else:
        report = markdown(results, command)
    with written_whole(args.out) as partial:
        partial.write_text(report, encoding="utf-8")
    print(f"wrote {args.out}")


def _series(args: argparse.Namespace) -> None:
    import json

    from .series import SeriesTrainSettings, evaluate, evaluation_markdown, train

    _set_threads(args.threads)
    settings = SeriesTrainSettings(
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        weights=tuple(args.loss_weights),
        variant=args.variant,
        seed=args.seed,
    )
    card = train(args.data, Path(args.out) / "model", settings, progress=sys.stderr.isatty())
    results = evaluate(args.data, card, "test", progress=sys.stderr.isatty())
    with written_whole(Path(args.out) / "evaluation.json") as partial:
        partial.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {card}\n{evaluation_markdown(results)}")


def _evaluate_series(args: argparse.Namespace) -> None:
    import json
    import shlex

    from .series import evaluate, evaluation_markdown

    if args.out and not args.out.endswith((".md", ".json")):
        raise InputError(f"{args.out}: --out must end in .md or .json")
    if args.out:
        check_output_file(args.out)
    results = evaluate(args.data, args.model, args.split, progress=sys.stderr.isatty())
    report = evaluation_markdown(results)
    if args.out:
        command = shlex.join(["ctqa-train", *args.argv])
        if args.out.endswith(".json"):
            text = json.dumps({"command": command, **results}, indent=2)
        else:
            text = f"# Series classifier evaluation\n\nMade by: `{command}`\n\n{report}"
        with written_whole(args.out) as partial:
            partial.write_text(text + "\n", encoding="utf-8")
    print(report)


def _fit_chest_score(args: argparse.Namespace) -> None:
    from .series import refit_score

    fit = refit_score(args.model, args.scores, args.out)
    terms = " + ".join(f"{b:.4g} {r}" for b, r in zip(fit["coefficients"], fit["regressors"]))
    print(f"wrote {args.out}.json: score = {terms} (n {fit['n']}, RMSE {fit['rmse']:.3f}, R2 {fit['r2']:.3f})")


def _score_data(args: argparse.Namespace) -> None:
    from .score_data import cli_score_data

    cli_score_data(args)


def _score(args: argparse.Namespace) -> None:
    from ctqa.models import registry

    from .score import ScoreTrainSettings, train

    _set_threads(args.threads)
    data = Path(args.data)
    if (data / "train.json").is_file() and (data / "image").is_dir() and not (data / "manifest.json").exists():
        from .score_data import build_score_dataset  # the LDCTIQAC2023 layout: import it as a score dataset first

        build_score_dataset([data], Path(args.out) / "data", progress=sys.stderr.isatty())
        data = Path(args.out) / "data"
    init = registry.resolve("global_score", args.init).card_path if args.init else None
    settings = ScoreTrainSettings(
        data=str(data),
        backbone=args.backbone,
        head=args.head,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        beta=args.beta,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        teachers=tuple(args.teachers),
        ema=args.ema,
        pretrain_steps=args.pretrain_steps,
        pretrained=args.pretrained,
        init=str(init) if init else None,
    )
    print(f"wrote {train(settings, args.out, args.device, args.resume)}")


def _score_ablation(args: argparse.Namespace) -> None:
    import shlex

    from .score import ablation, ablation_markdown

    _set_threads(args.threads)
    if not args.out.endswith(".md"):
        raise InputError(f"{args.out}: --out must end in .md")
    check_output_file(args.out)
    rows = ablation(args.data, args.runs, args.steps, args.device)
    report = ablation_markdown(rows, shlex.join(["ctqa-train", *args.argv]))
    with written_whole(args.out) as partial:
        partial.write_text(report, encoding="utf-8")
    print(report)


def _calibrate_score(args: argparse.Namespace) -> None:
    from ctqa.errors import InputError
    from ctqa.models import registry
    from ctqa.models.feature_score import is_feature_card

    from .score import calibrate_score

    spec = registry.resolve("global_score", args.model)
    if is_feature_card(spec.card):
        raise InputError(f"--model {args.model}: calibrate-score maps score networks; {spec.name} is a physics-feature "
                         "score (refit it with ctqa-train score-features); try --model score_mdiqa")
    record = calibrate_score(spec.card_path, args.ratings, args.out, args.scaling)
    print(
        f"wrote {args.out}.json: {record['ratings']} ratings, RMSE {record['rmse_before']:.3f} -> "
        f"{record['rmse_after']:.3f} (in-sample)"
    )


def _denoise_data(args: argparse.Namespace) -> None:
    from .denoise import build_denoise_dataset

    manifest = build_denoise_dataset(
        args.input,
        args.out,
        args.doses,
        args.kernels,
        args.slices_per_volume,
        args.seed,
        as_is=args.as_is,
        pixel_mm=args.pixel_mm,
        progress=sys.stderr.isatty(),
    )
    counts: dict[str, int] = {}
    for entry in manifest["sources"]:
        counts[entry["split"]] = counts.get(entry["split"], 0) + sum(entry["samples"].values())
    print(f"wrote {args.out}: {len(manifest['sources'])} sources; images per split {counts}")


def _denoise(args: argparse.Namespace) -> None:
    from .denoise import DenoiseTrainSettings, train

    _set_threads(args.threads)
    settings = DenoiseTrainSettings(
        data=args.data,
        method=args.method,
        width=args.width,
        space_to_depth=args.space_to_depth,
        nonlocal_window=args.nonlocal_window,
        steps=args.steps,
        batch=args.batch,
        patch=args.patch,
        lr=args.lr,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        noise_gain=tuple(args.noise_gain),
        gamma=args.gamma,
        loss=args.loss,
        init=args.init,
        min_body=args.min_body,
    )
    print(f"wrote {train(settings, args.out, args.device, args.resume)}")


def _export(args: argparse.Namespace) -> None:
    import json

    from ctqa.models.registry import read_json
    from ctqa.outputs import check_output_folder

    from .export import export_run

    run, models_dir = Path(args.run), check_output_folder(args.models_dir or MODELS_DIR)  # the output first
    task = read_json(run / "model.json", "model card").get("task")
    if task == "denoise":
        from .denoise import export

        card = export(run / "model", args.name, models_dir, args.default, args.reproduce)
    elif task == "global_score":
        from .score import export

        card = export(run / "model", args.name, models_dir, args.default, args.reproduce)
    elif task == "series_class":
        from .series import export

        evaluation_path = run / "evaluation.json"
        evaluation = json.loads(evaluation_path.read_text(encoding="utf-8")) if evaluation_path.is_file() else None
        card = export(run / "model", args.name, models_dir, args.default, args.reproduce, evaluation)
    else:
        card = export_run(args.run, args.name, models_dir, default=args.default, reproduce=args.reproduce)
    print(f"wrote {card} and its weights, Markdown card and manifest entry")


def _denoise_eval(args: argparse.Namespace) -> None:
    from .denoise_eval import run_cli

    _set_threads(args.threads)
    run_cli(args)


def _score_features(args: argparse.Namespace) -> None:
    from .score_features import train

    path = train(args.mayo, args.out, tuple(args.val_patients), args.denoise_model)
    print(f"wrote {path} and its weights")


def _validate_real(args: argparse.Namespace) -> None:
    from .validate_real import run_cli

    _set_threads(args.threads)
    run_cli(args)


def _reader_ceiling(args: argparse.Namespace) -> None:
    from .reader_ceiling import run_cli

    run_cli(args)


def _calibrate_map(args: argparse.Namespace) -> None:
    from .map_calibration import run_cli

    run_cli(args)


def _series_real(args: argparse.Namespace) -> None:
    from .series_real import run

    run(Path(args.data), Path(args.card), Path(args.out), args.refit)
    print(f"wrote {args.out}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `ctqa-train`; returns the exit status (2 on bad input, with one line on stderr)."""
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    commands = {
        "labels": _labels,
        "simulate": _simulate,
        "maps": _maps,
        "evaluate-maps": _evaluate_maps,
        "export": _export,
        "series": _series,
        "evaluate-series": _evaluate_series,
        "fit-chest-score": _fit_chest_score,
        "score-data": _score_data,
        "score": _score,
        "score-ablation": _score_ablation,
        "calibrate-score": _calibrate_score,
        "denoise-data": _denoise_data,
        "denoise": _denoise,
        "denoise-eval": _denoise_eval,
        "score-features": _score_features,
        "validate-real": _validate_real,
        "reader-ceiling": _reader_ceiling,
        "series-real": _series_real,
        "calibrate-map": _calibrate_map,
    }
    return exit_status("ctqa-train", lambda: commands[args.command](args))


if __name__ == "__main__":
    sys.exit(main())

"""Install the Python packages the core (``ctqa``) needs inside 3D Slicer, the way Slicer recommends.

This file imports nothing from ``ctqa``: it runs before the core can be imported. The packages are listed once, in
``Resources/requirements.txt`` (the core: OpenCV), ``Resources/requirements-optional.txt`` (zlib-ng: installed with
the core's packages when it can be, never required), ``Resources/requirements-learned.txt`` (learned models) and
``Resources/requirements-batch.txt`` (``ctqa batch``: Ray, and matplotlib for its reports).

- Slicer >= 5.11 has ``slicer.packaging``: ``pip_ensure`` checks, asks the user, installs with a progress dialog
  and offers a restart when a package that was already imported changed.
- Slicer 5.6-5.10 does not: the missing requirements are computed here (``importlib.metadata`` and
  ``packaging``), the user confirms, and ``slicer.util.pip_install`` installs them.
- PyTorch is never installed with pip: it comes from the PyTorch extension (``PyTorchUtils``), which picks the build
  for this computer's GPU or CPU, with the torchvision built for it. torchvision counts as PyTorch's here: timm (the
  score network's backbones) needs it, and a torchvision that pip took from PyPI for another build of torch fails at
  import ("operator torchvision::nms does not exist"), so PyTorchUtils installs it too and pip is constrained to it.

In Slicer's testing mode (the module's self-test, the extension factory) nothing is installed, as
``pip_ensure(skip_in_testing=True)`` does: a test must not change the shared Slicer it runs in; the self-test skips
what needs packages that are not there.

Slicer's own numpy and SimpleITK (and PyTorch's torch and torchvision) are never replaced: a constraints file pins
their installed versions, so pip picks versions of our packages that work with them, or fails and says which package
conflicts.
We do not use ``pip_ensure(skip_packages=...)``: Slicer documents it as a "discouraged workaround for transitive
dependency conflicts" (``Base/Python/slicer/packaging.py``); it installs every requirement with ``--no-deps`` and
removes the skipped names from the installed metadata, so pip would no longer check that, for example, an OpenCV
wheel built for numpy 2 matches Slicer's numpy. A constraints file keeps that check and still changes nothing of
Slicer's.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    from slicer.i18n import tr as _
except ImportError:  # outside Slicer (tests, PythonSlicer without the application)

    def _(text: str) -> str:
        return text


RESOURCES = Path(__file__).resolve().parents[1] / "Resources"
REQUIREMENTS_FILE = RESOURCES / "requirements.txt"
OPTIONAL_REQUIREMENTS_FILE = RESOURCES / "requirements-optional.txt"
LEARNED_REQUIREMENTS_FILE = RESOURCES / "requirements-learned.txt"
BATCH_REQUIREMENTS_FILE = RESOURCES / "requirements-batch.txt"
REQUESTER = "CTQualityAssessment"
#: Packages whose build belongs to Slicer (numpy, SimpleITK with Slicer's IO) or to the PyTorch extension (torch,
#: torchvision).
SLICER_OWNED_PACKAGES = ("numpy", "SimpleITK", "torch", "torchvision")
TORCH_VERSION_REQUIREMENT = ">=2.3"
#: Installed by PyTorchUtils with torch (its build matches torch's); timm imports it.
TORCHVISION_REQUIREMENT = "torchvision"


def ensure_dependencies(learned: bool = False, batch: bool = False) -> None:
    """Make the core importable: install what Resources/requirements.txt lists and is missing (with what
    Resources/requirements-optional.txt lists, best effort: see ensure_requirements).

    learned=True also makes learned models usable: PyTorch from the PyTorch extension, then
    Resources/requirements-learned.txt. batch=True also installs Resources/requirements-batch.txt (`ctqa batch`).
    Nothing is installed when everything is there already.
    Raises RuntimeError saying what failed and how to fix it (declined, no network, pip error, no PyTorch extension).
    """
    ensure_requirements(REQUIREMENTS_FILE, optional=OPTIONAL_REQUIREMENTS_FILE)
    if learned:
        ensure_torch()
        ensure_requirements(LEARNED_REQUIREMENTS_FILE)
    if batch:
        ensure_requirements(BATCH_REQUIREMENTS_FILE)


#
# Pure helpers (no Slicer needed; unit-tested)
#


def read_requirements(path: str | Path) -> list[str]:
    """Requirement lines of a requirements file, with the rule of slicer.packaging.load_requirements:
    blank lines, '#' comment lines and pip options ('-c', '-r', '--index-url') are skipped."""
    lines = (line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith(("#", "-"))]


def installed_version(name: str) -> str | None:
    """Version of the installed distribution name (any spelling: zlib-ng, zlib_ng), or None."""
    for spelling in dict.fromkeys((name, name.replace("-", "_"), name.replace("_", "-"))):
        try:
            return importlib.metadata.version(spelling)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def version_satisfies(requirement_line: str, version: str | None) -> bool:
    """True when version (None: not installed) meets the requirement's version specifier."""
    from packaging.requirements import Requirement

    if version is None:
        return False
    return Requirement(requirement_line).specifier.contains(version, prereleases=True)


def missing_requirements(requirement_lines) -> list[str]:
    """The requirement lines that the installed packages do not satisfy (not installed, or a version outside the
    specifier). Lines whose environment marker does not apply here (e.g. ``; sys_platform == "win32"``) are met."""
    from packaging.requirements import Requirement

    missing = []
    for line in requirement_lines:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        if not version_satisfies(line, installed_version(requirement.name)):
            missing.append(line)
    return missing


def slicer_constraints(names=SLICER_OWNED_PACKAGES) -> list[str]:
    """'name==version' for each installed package of names: pip may then install nothing that replaces them."""
    return [f"{name}=={version}" for name in names if (version := installed_version(name)) is not None]


#
# Installation (needs Slicer)
#


def ensure_requirements(path: Path, optional: Path | None = None) -> None:
    """Install the requirements of path that are missing; RuntimeError with the fix when they stay missing.

    optional: a requirements file whose missing packages are installed along with path's (one confirmation), best
    effort: only when path's are missing too (never asked for on their own), never in testing mode; when pip fails
    with them, path's are installed alone, and when they stay missing only a log line says so.
    """
    requirement_lines = read_requirements(path)
    missing = missing_requirements(requirement_lines)
    if not missing:
        return
    if testing_enabled():
        raise RuntimeError(_install_failed_message(missing, _("Slicer's testing mode installs nothing")))
    extra = missing_requirements(read_requirements(optional)) if optional is not None else []
    logging.info(f"{REQUESTER}: installing {', '.join(missing + extra)}")
    try:
        try:
            _install([path, optional] if extra else [path], missing + extra)
        except subprocess.CalledProcessError as error:  # pip failed (not a decline): perhaps on an optional one
            if not extra:
                raise
            logging.warning(f"{REQUESTER}: installing {', '.join(missing + extra)} failed ({error}); now without "
                            f"the optional {', '.join(extra)}")
            _install([path], missing)
    except Exception as error:  # declined, pip failed, no network: the same fix for the user
        importlib.invalidate_caches()
        still_missing = missing_requirements(requirement_lines)
        if still_missing:  # only what is required is named: the optional ones are not needed
            raise RuntimeError(_install_failed_message(still_missing, error)) from error
        logging.warning(f"{REQUESTER}: not installed (optional, the module works without): {', '.join(extra)}")
        return
    importlib.invalidate_caches()
    still_missing = missing_requirements(requirement_lines)
    if still_missing:
        raise RuntimeError(_install_failed_message(still_missing, _("still missing after the installation")))
    not_installed = missing_requirements(extra)
    if not_installed:
        logging.warning(f"{REQUESTER}: not installed (optional, the module works without): {', '.join(not_installed)}")


def _install(paths: list[Path], lines: list[str]) -> None:
    """Install the requirements of paths (Slicer >= 5.11: slicer.packaging checks them itself) or, on older Slicer,
    the requirement lines, with Slicer's packages pinned by a constraints file."""
    with tempfile.TemporaryDirectory() as folder:
        constraints = Path(folder) / "slicer-constraints.txt"
        constraints.write_text("\n".join(slicer_constraints()) + "\n", encoding="utf-8")
        if slicer_packaging() is not None:
            _pip_ensure(paths, constraints)
        else:
            _confirm_and_pip_install(lines, constraints)


def testing_enabled() -> bool:
    """Slicer's testing mode (slicer.app.testingEnabled(): self-tests, the extension factory), where nothing is
    installed; False outside the application (PythonSlicer, the tests here), which has no slicer.app."""
    import slicer

    return hasattr(slicer, "app") and bool(slicer.app.testingEnabled())


def slicer_packaging():
    """The slicer.packaging module (Slicer >= 5.11), or None on older Slicer, which has no such module."""
    try:
        import slicer.packaging
    except ImportError:
        return None
    return slicer.packaging


def _pip_ensure(paths: list[Path], constraints: Path) -> None:
    """Slicer >= 5.11: check, confirm, install with progress, offer a restart (Base/Python/slicer/packaging.py); the
    requirements of all paths at once (one confirmation).

    skip_in_testing is left at its default (True): in testing mode pip_ensure only logs; ensure_requirements does
    not even get here then.
    """
    import slicer.packaging

    requirements = [requirement for path in paths for requirement in slicer.packaging.load_requirements(path)]
    slicer.packaging.pip_ensure(requirements, constraints=constraints, requester=REQUESTER)


def _confirm_and_pip_install(missing: list[str], constraints: Path) -> None:
    """Slicer 5.6-5.10: ask, then slicer.util.pip_install (a list of pip arguments, blocking, output in the log).
    Never in testing mode (ensure_requirements), where confirmOkCancelDisplay would answer OK without a dialog."""
    import slicer

    message = _(
        "{requester} needs these Python packages:\n\n{packages}\n\n"
        "Install them now? This modifies Slicer's Python environment and may take a few minutes."
    ).format(requester=REQUESTER, packages="\n".join(missing))
    if not slicer.util.confirmOkCancelDisplay(message, windowTitle=_("Install Python packages")):
        raise RuntimeError("User declined package installation")
    slicer.util.pip_install([*missing, "-c", str(constraints)])


def ensure_torch() -> None:
    """PyTorch TORCH_VERSION_REQUIREMENT and its torchvision through the PyTorch extension's PyTorchUtils (never pip
    here).

    PyTorchUtilsLogic().installTorch(askConfirmation, forceComputationBackend, torchVersionRequirement, ...) installs
    torch and torchvision with light-the-torch and returns the torch module, or None when the user declines
    (fepegar/SlicerPyTorch: PyTorchUtils/PyTorchUtils.py, _getPipInstallArguments: "torch" + requirement,
    "torchvision"). A torch without torchvision (installed by hand) goes through it too, so that pip never takes a
    torchvision for another build when it installs timm.
    """
    requirement = f"torch{TORCH_VERSION_REQUIREMENT}"
    if not missing_requirements([requirement, TORCHVISION_REQUIREMENT]):
        _check_loaded_torch(requirement)
        return
    if testing_enabled():
        raise RuntimeError(_torch_failed_message(requirement, _("Slicer's testing mode installs nothing")))
    try:
        import PyTorchUtils
    except ImportError as error:
        raise RuntimeError(
            _(
                "Learned quality models need PyTorch ({requirement}). Install the PyTorch extension from the "
                "Extensions Manager, restart Slicer and try again, or choose the physics model."
            ).format(requirement=requirement)
        ) from error
    try:
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=True, torchVersionRequirement=TORCH_VERSION_REQUIREMENT
        )
    except Exception as error:  # light-the-torch or pip failed
        raise RuntimeError(_torch_failed_message(requirement, error)) from error
    if torch is None:
        raise RuntimeError(_torch_failed_message(requirement, _("the installation was declined")))
    importlib.invalidate_caches()
    still_missing = missing_requirements([requirement, TORCHVISION_REQUIREMENT])
    if still_missing:
        reason = _("PyTorch {version} was installed; still missing: {missing}").format(
            version=installed_version("torch"), missing=", ".join(still_missing)
        )
        raise RuntimeError(_torch_failed_message(requirement, reason))
    _check_loaded_torch(requirement)


def _check_loaded_torch(requirement: str) -> None:
    """An older torch imported earlier in this session stays in use until Slicer restarts."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    loaded = getattr(torch, "__version__", None)
    if not version_satisfies(requirement, loaded):
        reason = _("PyTorch {version} is loaded; restart Slicer to use the updated one").format(version=loaded)
        raise RuntimeError(_torch_failed_message(requirement, reason))


def _install_failed_message(missing: list[str], error) -> str:
    packages = " ".join(missing)
    return _(
        "Could not install the Python packages {requester} needs: {packages} ({error}). "
        'Install them from the Python console (View > Python Console) with slicer.util.pip_install("{packages}"), '
        "restart Slicer and try again."
    ).format(requester=REQUESTER, packages=packages, error=error)


def _torch_failed_message(requirement: str, error) -> str:
    return _(
        "PyTorch ({requirement}) for learned quality models is not available: {error}. Install it in the "
        "PyTorch Utils module (PyTorch extension, from the Extensions Manager), restart Slicer and try again, "
        "or choose the physics model."
    ).format(requirement=requirement, error=error)

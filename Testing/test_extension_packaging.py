"""Extension packaging: the CMake metadata, the ExtensionsIndex catalog entry and the licence agree.

The catalog entry follows Slicer/Slicer:Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json, the schema the
ExtensionsIndex checks every top-level *.json against (its .pre-commit-config.yaml, check-jsonschema).
"""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CATALOG_ENTRY = ROOT / "CTQualityAssessment.json"
SCHEMA_URL = (
    "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json#"
)
#: Properties of schema v1.0.1 ("additionalProperties": false; required: $schema, category, scm_url).
SCHEMA_PROPERTIES = {
    "$schema": str,
    "category": str,
    "scm_url": str,
    "scm_revision": str,
    "scm_type": str,
    "build_dependencies": list,
    "build_subdirectory": str,
    "enabled": bool,
    "tier": int,
}


def _cmake_setting(name: str) -> str:
    match = re.search(rf'^set\({name} "([^"]*)"\)', (ROOT / "CMakeLists.txt").read_text(encoding="utf-8"), re.MULTILINE)
    assert match, f"{name} not set in CMakeLists.txt"
    return match.group(1)


def test_catalog_entry_follows_schema_v1_0_1():
    entry = json.loads(CATALOG_ENTRY.read_text(encoding="utf-8"))
    assert entry["$schema"] == SCHEMA_URL
    assert {"$schema", "category", "scm_url"} <= set(entry)
    assert set(entry) <= set(SCHEMA_PROPERTIES), f"not in the schema: {set(entry) - set(SCHEMA_PROPERTIES)}"
    for key, value in entry.items():
        assert isinstance(value, SCHEMA_PROPERTIES[key]), key
    assert entry["tier"] in (1, 3, 5)
    assert all(isinstance(name, str) for name in entry["build_dependencies"])


def test_catalog_entry_matches_the_cmake_metadata():
    entry = json.loads(CATALOG_ENTRY.read_text(encoding="utf-8"))
    assert entry["scm_url"] == _cmake_setting("EXTENSION_HOMEPAGE")
    assert entry["category"] == _cmake_setting("EXTENSION_CATEGORY")
    assert entry["build_dependencies"] == _cmake_setting("EXTENSION_DEPENDS").split() == ["PyTorch"]
    assert entry["tier"] == 1


def test_cmake_minimum_is_a_range_cmake_4_accepts():
    """CMake 4 refuses policy versions below 3.5; Slicer 5.10's own range is 3.20.6...3.22.6 (ExtensionsIndex #2356)."""
    first = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8").splitlines()[0]
    match = re.fullmatch(r"cmake_minimum_required\(VERSION (\d+)\.(\d+)\.\d+\.\.\.(\d+\.\d+\.\d+) FATAL_ERROR\)", first)
    assert match, first
    assert (int(match.group(1)), int(match.group(2))) >= (3, 20)


def test_license_is_apache_2_as_in_pyproject():
    text = (ROOT / "LICENSE.txt").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")

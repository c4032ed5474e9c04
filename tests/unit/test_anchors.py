"""The conformance data in tests/data/anchors: complete, unchanged, documented, and, when the
reference collection sits beside the repository (../shared/anchors), identical to it.

Nothing here skips: without ../shared the committed copy is still checked against its
committed manifest and README.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.support.anchors import (
    ANCHORS,
    FOLDERS,
    MANIFEST,
    README,
    REPO,
    SHARED,
    data_files,
    manifest_lines,
    read_manifest,
    sha256,
)


def test_every_data_file_is_in_the_manifest_with_its_digest() -> None:
    manifest = read_manifest()
    files = data_files(ANCHORS)
    assert files, f"no conformance data under {ANCHORS}"
    assert sorted(manifest) == files, (
        "tests/data/anchors and SHA256SUMS disagree: "
        f"not in the manifest {sorted(set(files) - set(manifest))}, "
        f"missing files {sorted(set(manifest) - set(files))}"
    )
    changed = [name for name in files if sha256(ANCHORS / name) != manifest[name]]
    assert not changed, f"anchor files changed since their digests were recorded: {changed}"


def test_the_manifest_is_what_sha256sum_writes() -> None:
    """Sorted, one ``digest  path`` line per file, so ``sha256sum -c SHA256SUMS`` checks it."""
    assert MANIFEST.read_text(encoding="utf-8").splitlines() == manifest_lines()


def test_the_readme_names_every_file_and_the_licences() -> None:
    text = README.read_text(encoding="utf-8")
    named = set(re.findall(r"`([^`]+)`", text))
    missing = [name for name in data_files(ANCHORS) if name not in named]
    assert not missing, f"tests/data/anchors/README.md does not describe {missing}"
    for folder in FOLDERS:
        assert f"## {folder}/" in text
    assert "GPLv3" in text and "MIT" in text
    assert "int-brain-lab/ibllib" in text
    assert "AllenNeuralDynamics/aind-foraging-behavior-bonsai-automatic-training" in text
    assert "m-col/reach" in text


def test_no_anchor_file_is_hidden_by_gitignore() -> None:
    """An ignored file would pass here and be missing from a fresh clone."""
    if not (REPO / ".git").exists():
        # An exported tree (no git): the manifest test covers completeness.
        assert MANIFEST.is_file()
        return
    names = [f"tests/data/anchors/{name}" for name in data_files(ANCHORS)]
    names += ["tests/data/anchors/SHA256SUMS", "tests/data/anchors/README.md"]
    result = subprocess.run(
        ["git", "-C", str(REPO), "check-ignore", "--no-index", "--stdin"],
        input="\n".join(names) + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    assert result.stdout.split() == [], f".gitignore hides anchor files: {result.stdout}"


def test_the_copy_is_identical_to_the_shared_collection_beside_the_repository() -> None:
    """Byte for byte, and nothing missing either way, when ../shared/anchors exists.

    Without it (a fresh clone), the copy is checked against the committed manifest instead,
    which is what the shared collection's files hashed to when they were copied.
    """
    if not SHARED.is_dir():
        manifest = read_manifest()
        assert sorted(manifest) == data_files(ANCHORS)
        assert all(sha256(ANCHORS / name) == digest for name, digest in manifest.items())
        text = README.read_text(encoding="utf-8")
        assert all(f"`{name}`" in text for name in manifest)
        return
    shared = data_files(SHARED)
    ours = data_files(ANCHORS)
    assert sorted(set(shared) - set(ours)) == [], "files of ../shared/anchors not copied here"
    assert sorted(set(ours) - set(shared)) == [], "files here that ../shared/anchors lacks"
    differ = [
        name for name in shared if (SHARED / name).read_bytes() != (ANCHORS / name).read_bytes()
    ]
    assert not differ, f"differ from ../shared/anchors: {differ}"
    # Anything else in the collection (a new data folder) must be copied too; only its own
    # README.md is replaced by ours.
    others = sorted(
        path.relative_to(SHARED).as_posix() for path in SHARED.iterdir() if path.name not in FOLDERS
    )
    assert others in ([], ["README.md"]), f"../shared/anchors has more to copy: {others}"


@pytest.mark.parametrize("folder", FOLDERS)
def test_each_folder_holds_data(folder: str) -> None:
    assert any((ANCHORS / folder).rglob("*.json")), f"no JSON anchors in {folder}/"

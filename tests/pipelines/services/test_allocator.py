"""The faster allocator the Snakefile preloads: found, chosen, refused, turned off."""

from __future__ import annotations

from pathlib import Path

import pytest

from eebench.pipelines.services.allocator import (
    CANDIDATES,
    AllocatorError,
    fast_allocator,
    preload_prefix,
)


@pytest.fixture
def libdir(tmp_path: Path) -> Path:
    for name in CANDIDATES:
        (tmp_path / name).write_bytes(b"")
    return tmp_path


def test_auto_picks_the_first_candidate_found(libdir: Path, tmp_path: Path) -> None:
    assert fast_allocator({}, dirs=[str(libdir)]) == libdir / CANDIDATES[0]
    (libdir / CANDIDATES[0]).unlink()
    assert fast_allocator({}, dirs=[str(libdir)]) == libdir / CANDIDATES[1]
    assert fast_allocator({}, dirs=[str(tmp_path / "empty")]) is None


def test_system_turns_it_off_and_a_path_is_taken_as_given(libdir: Path) -> None:
    assert fast_allocator({"EEBENCH_ALLOCATOR": "system"}, dirs=[str(libdir)]) is None
    chosen = libdir / CANDIDATES[1]
    assert fast_allocator({"EEBENCH_ALLOCATOR": str(chosen)}, dirs=[]) == chosen


def test_a_missing_library_is_one_line_naming_the_fix(tmp_path: Path) -> None:
    with pytest.raises(AllocatorError, match="is not a file: give the path") as error:
        fast_allocator({"EEBENCH_ALLOCATOR": str(tmp_path / "nope.so")})
    assert "\n" not in str(error.value)


def test_prefix_keeps_an_existing_preload(libdir: Path) -> None:
    prefix = preload_prefix({"LD_PRELOAD": "/x/other.so"}, dirs=[str(libdir)])
    assert prefix == f"env LD_PRELOAD={libdir / CANDIDATES[0]}:/x/other.so "
    assert preload_prefix({"EEBENCH_ALLOCATOR": "system"}) == ""

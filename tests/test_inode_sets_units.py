"""collector/policy/inode_sets.py without BPF: what Equal/Prefix values resolve to (#12)."""

from __future__ import annotations

import os
from pathlib import Path

from collector.policy import inode_sets
from collector.policy.inode_sets import GEN, SELF, UNDER, kernel_dev, resolve


def _key(p: Path) -> tuple[int, int]:
    st = os.stat(p)
    return kernel_dev(st.st_dev), st.st_ino


def test_equal_prefix_and_bounds(tmp_path: Path, monkeypatch) -> None:
    d = tmp_path / "guard"
    (d / "sub").mkdir(parents=True)
    (d / "a").write_text("a")
    (d / "sub" / "b").write_text("b")
    (tmp_path / "passwd").write_text("x")
    (tmp_path / "passwd-").write_text("y")

    r = resolve("equal", [str(tmp_path / "passwd"), "relative/ignored", str(tmp_path / "missing")])
    assert set(r.keys) == {_key(tmp_path / "passwd")}
    flags, _gen = r.keys[_key(tmp_path / "passwd")]
    assert flags & SELF and not flags & UNDER
    assert str(tmp_path) in r.dirs                      # watched: a rename over it is followed

    r = resolve("prefix", [f"{d}/"])
    assert r.keys[_key(d)][0] & UNDER and not r.keys[_key(d)][0] & SELF   # the directory: below it
    assert r.keys[_key(d / "a")][0] & SELF and r.keys[_key(d / "sub" / "b")][0] & SELF
    assert {str(d), str(d / "sub")} <= r.dirs

    r = resolve("prefix", [str(tmp_path / "pass")])     # not a directory: names that start so
    assert {_key(tmp_path / "passwd"), _key(tmp_path / "passwd-")} <= set(r.keys)
    assert _key(d) not in r.keys

    monkeypatch.setattr(inode_sets, "WALK_MAX", 1)
    r = resolve("prefix", [f"{d}/"])
    assert any("more than 1 files" in n for n in r.notices)


def test_root_and_generation(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("x")
    r = resolve("equal", ["/etc/passwd"], root=str(tmp_path))
    assert set(r.keys) == {_key(tmp_path / "etc" / "passwd")}
    flags, gen = r.keys[_key(tmp_path / "etc" / "passwd")]
    # ext4/xfs/btrfs report i_generation; tmpfs does not (then no GEN flag, gen 0)
    assert (flags & GEN and gen != 0) or (not flags & GEN and gen == 0)


def test_tetragon_whole_string_nul_names_the_file(tmp_path: Path) -> None:
    """Tetragon's library writes whole-name values as "/etc/passwd\\0": the parser drops the NUL
    (selector_parser.whole_names; the compiled inode sets: tests/test_tetragon_compat.py), and a
    NUL left in a name never raises at load."""
    from collector.policy.selector_parser import whole_names  # noqa: PLC0415

    (tmp_path / "secret").write_text("x")
    assert resolve("equal", [str(tmp_path / "secret") + "\0"]).keys == {}
    values = whole_names([str(tmp_path / "secret") + "\0"])
    assert values == [str(tmp_path / "secret")]
    assert set(resolve("equal", values).keys) == {_key(tmp_path / "secret")}

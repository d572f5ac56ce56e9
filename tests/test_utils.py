"""The atomic-write helper every stage uses."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import scipy.sparse as sp

from spared_utils.utils import atomic_path, dense


def test_atomic_file_replaces_the_target_only_on_success(tmp_path):
    target = tmp_path / "sub" / "table.csv"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("new")
    assert target.read_text() == "new"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.csv"]  # no temporary file left


def test_atomic_folder_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "store"
    with atomic_path(target, directory=True) as tmp:
        (tmp / "a.npy").write_bytes(b"1")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target, directory=True) as tmp:
            (tmp / "b.npy").write_bytes(b"2")
            raise KeyboardInterrupt
    assert sorted(p.name for p in target.iterdir()) == ["a.npy"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    with atomic_path(target, directory=True) as tmp:  # a finished rewrite replaces the old folder
        (tmp / "c.npy").write_bytes(b"3")
    assert sorted(p.name for p in target.iterdir()) == ["c.npy"]


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "f.txt") as tmp:
            tmp.write_text("x")
        with atomic_path(tmp_path / "d", directory=True) as tmp:
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_dense_passes_arrays_and_densifies_sparse():
    x = np.arange(6.0).reshape(2, 3)
    assert dense(x) is x or np.array_equal(dense(x), x)
    assert np.array_equal(dense(sp.csr_matrix(x)), x)


def test_file_lock_makes_a_second_process_wait(tmp_path):
    """Two processes that want the same file: the second one enters only after the first left."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import sys, time
        from spared_utils.utils import file_lock
        with file_lock({str(tmp_path / 'target')!r}):
            with open({str(tmp_path / 'log')!r}, 'a') as log:
                log.write('in ' + sys.argv[1] + '\\n'); log.flush(); time.sleep(1.0)
                log.write('out ' + sys.argv[1] + '\\n')
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(k)]) for k in range(2)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    lines = (tmp_path / "log").read_text().split()
    # in/out pairs never interleave: in a, out a, in b, out b
    assert lines[0] == "in" and lines[2] == "out" and lines[1] == lines[3]
    assert lines[4] == "in" and lines[6] == "out" and lines[5] == lines[7] != lines[1]

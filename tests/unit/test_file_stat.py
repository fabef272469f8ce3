"""A file's compact stat (``attrs.FileStat``): it reads as the dict fusepy expects, and
``readdir``'s fill of a ``struct stat`` from it gives the same bytes as mfusepy's own
``set_st_attrs`` of that dict."""

from __future__ import annotations

import stat

from pictofs.core.tree.attrs import AttrPolicy, dir_stat, file_stat
from pictofs.fs.fuselib import fuse
from pictofs.fs.operations import _fill_stat

POLICY = AttrPolicy(uid=1234, gid=567, file_mode=0o640, umask=0o022)


def test_a_file_stat_reads_as_its_dict():
    found = file_stat(POLICY, 1025, 1_700_000_000.5)
    as_dict = dict(found)
    assert as_dict == {
        "st_mode": stat.S_IFREG | 0o640, "st_nlink": 1, "st_size": 1025, "st_blocks": 3,
        "st_blksize": 131072, "st_uid": 1234, "st_gid": 567,
        "st_mtime": 1_700_000_000_500_000_000, "st_ctime": 1_700_000_000_500_000_000,
        "st_atime": 1_700_000_000_500_000_000}
    assert found == as_dict and as_dict == found
    assert file_stat(POLICY, 0, 0.0)["st_blocks"] == 0
    assert file_stat(POLICY, 512, 0.0)["st_blocks"] == 1


def test_readdir_fills_struct_stat_as_fusepy_does():
    for found in (file_stat(POLICY, 20_001, 1_650_000_000.123456), dir_stat(POLICY, 3, 5.5)):
        ours, theirs = fuse.c_stat(), fuse.c_stat()
        _fill_stat(ours, found)
        fuse.set_st_attrs(theirs, dict(found), use_ns=True)
        assert bytes(ours) == bytes(theirs)

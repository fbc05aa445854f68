#!/usr/bin/env python3
"""newc.py DIR MTIME > initramfs.cpio — a reproducible newc ("070701") cpio of DIR.

Entries sorted by path, inode numbers counted from 1, owner root, every mtime MTIME, so the
same tree gives the same bytes (busybox cpio records the build machine's inode numbers).
Handles directories, regular files, symlinks and device nodes."""
import os
import stat
import sys


def main() -> None:
    root, mtime = sys.argv[1], int(sys.argv[2])
    out = sys.stdout.buffer
    paths = []
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for n in sorted(dirs + files):
            paths.append(os.path.relpath(os.path.join(d, n), root))
    paths.sort()

    def entry(name: bytes, mode: int, data: bytes, ino: int, rdev: int = 0, nlink: int = 1) -> None:
        fields = [ino, mode, 0, 0, nlink, mtime, len(data), 0, 0,
                  os.major(rdev), os.minor(rdev), len(name) + 1, 0]
        h = b"070701" + b"".join(b"%08X" % f for f in fields) + name + b"\0"
        out.write(h + b"\0" * (-len(h) % 4))
        out.write(data + b"\0" * (-len(data) % 4))

    for i, p in enumerate(paths, start=1):
        full = os.path.join(root, p)
        st = os.lstat(full)
        mode = st.st_mode
        if stat.S_ISREG(mode):
            with open(full, "rb") as f:
                data = f.read()
        elif stat.S_ISLNK(mode):
            data = os.readlink(full).encode()
        else:
            data = b""
        rdev = st.st_rdev if (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) else 0
        entry(p.encode(), mode, data, i, rdev, 2 if stat.S_ISDIR(mode) else 1)
    entry(b"TRAILER!!!", 0, b"", 0, 0, 1)


if __name__ == "__main__":
    main()

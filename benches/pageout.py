#!/usr/bin/env python3
"""benches/pageout.py PID — ask the kernel to page out every file-backed mapping of PID
(process_madvise(MADV_PAGEOUT), Linux >= 5.10, root or CAP_SYS_NICE + ptrace rights).

Used by benches/idle-rss.sh (PAGEOUT=1) to tell the pages an idle executor keeps touching from
those that only its start touched: after this, whatever comes back resident is its working set.
Pages shared with other processes (libc) stay, and there is no swap for anonymous memory, so only
the file-backed pages of the process's own mappings (its binary) are affected. x86_64 syscall
numbers. Prints the number of bytes advised."""
import ctypes
import sys

SYS_PIDFD_OPEN, SYS_PROCESS_MADVISE, MADV_PAGEOUT = 434, 440, 21


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def main() -> None:
    pid = int(sys.argv[1])
    libc = ctypes.CDLL(None, use_errno=True)
    spans = []
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            f = line.split()
            if len(f) >= 6 and f[4] != "0":  # an inode: file-backed
                lo, hi = (int(x, 16) for x in f[0].split("-"))
                spans.append(IoVec(lo, hi - lo))
    pidfd = libc.syscall(SYS_PIDFD_OPEN, pid, 0)
    if pidfd < 0:
        sys.exit(f"pidfd_open: errno {ctypes.get_errno()}")
    arr = (IoVec * len(spans))(*spans)
    done = libc.syscall(SYS_PROCESS_MADVISE, pidfd, arr, len(spans), MADV_PAGEOUT, 0)
    if done < 0:
        sys.exit(f"process_madvise: errno {ctypes.get_errno()}")
    print(done)


main()

"""The two small Python programs edgeprune runs on the board, kept here as data.

Why programs and not shell: the board's shell is unknown (dash, busybox ash, bash) and
a remote command line is a string the shell re-parses. These run with the device's own
``python`` via ``python -c SCRIPT ARG...``; every value arrives as an argv item, quoted
once by :func:`edgeprune.bench.ssh.command.build_command`, so no device field is ever
interpreted by a shell. They need only the standard library (the runner brings numpy).

The markers below are the whole protocol between the launcher and
:class:`~edgeprune.bench.ssh.executor.SSHExecutor`. The scripts spell them out
literally, so that what runs on the board reads as plain Python; a test checks that
every marker appears in :data:`LAUNCHER`.
"""

from __future__ import annotations

#: stderr line: the run's process group id, so a timeout can kill the whole group.
#: It is also the moment the run's clock starts (waiting for the lock does not count).
PGID_MARKER = "EDGEPRUNE_PGID="
#: stderr line: every lock slot is taken; the launcher waits (once per run).
LOCK_WAIT_MARKER = "EDGEPRUNE_LOCK_WAIT"
#: stderr line, with exit code :data:`LOCK_TIMEOUT_EXIT`: gave up waiting for a slot.
LOCK_TIMEOUT_MARKER = "EDGEPRUNE_LOCK_TIMEOUT"
#: EX_TEMPFAIL: "try again later", distinct from the runner's own exit codes (0, 1, 2).
LOCK_TIMEOUT_EXIT = 75
#: Prefix of every marker: lines with it are protocol, not messages for the user.
MARKER_PREFIX = "EDGEPRUNE_"
#: Lock files in the device's workdir, one per concurrency slot (for messages).
LOCK_FILES = ".edgeprune-lock.*"

# argv: WORKDIR SLOTS WAIT_S PROGRAM_ARGV...
# It takes a free slot lock in WORKDIR (flock on .edgeprune-lock.<i>, non-blocking over
# the slots, polled until WAIT_S), keeps the locked fd open across exec so the *runner*
# holds the lock and the kernel releases it whenever the runner ends or is killed (no
# stale locks, no cleanup), makes itself a process-group leader so the runner's worker
# processes can be killed with it, prints the group id and execs PROGRAM_ARGV with the
# same python. Lock files are opened read-only when another user created them.
LAUNCHER = r"""
import fcntl, os, sys, time
workdir, slots, wait_s, argv = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
deadline, said, fd = time.monotonic() + wait_s, False, None
while fd is None:
    for i in range(slots):
        path = os.path.join(workdir, ".edgeprune-lock.%d" % i)
        try:
            f = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            f = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fd = f
            break
        except OSError:
            os.close(f)
    if fd is None:
        if not said:
            sys.stderr.write("EDGEPRUNE_LOCK_WAIT\n"); sys.stderr.flush(); said = True
        if time.monotonic() > deadline:
            sys.stderr.write("EDGEPRUNE_LOCK_TIMEOUT\n"); sys.stderr.flush(); sys.exit(75)
        time.sleep(0.5)
os.set_inheritable(fd, True)
try:
    os.setpgid(0, 0)
except OSError:
    pass
sys.stderr.write("EDGEPRUNE_PGID=%d\n" % os.getpgrp()); sys.stderr.flush()
os.execv(sys.executable, [sys.executable] + argv)
"""

# argv: PGID
# SIGTERM to the run's process group, SIGKILL if anything is left after a 3 s grace
# (the runner's workers get the chance to exit cleanly; a hung one does not stop us).
KILLER = r"""
import os, signal, sys, time
pgid = int(sys.argv[1])
try:
    os.killpg(pgid, signal.SIGTERM)
except ProcessLookupError:
    sys.exit(0)
for _ in range(30):
    time.sleep(0.1)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        sys.exit(0)
os.killpg(pgid, signal.SIGKILL)
"""

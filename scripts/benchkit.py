"""What scripts/bench-compare and scripts/soak share: starting and stopping processes, the
machine a run was on, and drawing and writing their reports. Standard library only.

Its doctests run in both scripts' `--self-test`.
"""

import math
import os
import resource
import signal
import socket
import subprocess

def raise_nofile():
    """Soft RLIMIT_NOFILE up to the hard limit (here and in each child before exec)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port():
    """A TCP port on 127.0.0.1 nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc, name, grace, log):
    """SIGTERM, then SIGKILL after `grace` seconds; `log` says so."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        log(f"{name} (pid {proc.pid}) still up {grace:.0f} s after SIGTERM: SIGKILL")
        proc.kill()
        proc.wait()


def redis_answers(port):
    """Whether a Redis on 127.0.0.1:`port` answers PING (OSError if nothing listens)."""
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")


def cmd_out(argv, cwd):
    """A command's stdout, stripped; "" if it cannot run, fails or takes over 30 s."""
    try:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return ""


def cpu_model():
    """The CPU's model name from /proc/cpuinfo, or None."""
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def commit(cwd):
    """The checkout's short commit, "?" outside git; and whether tracked files are changed."""
    short = cmd_out(["git", "rev-parse", "--short", "HEAD"], cwd) or "?"
    return short, bool(cmd_out(["git", "status", "--porcelain", "--untracked-files=no"], cwd))


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------


def nice_step(span, count=5):
    """A round step (1, 2 or 5 × 10^k) that cuts `span` into at most about `count` parts.

    >>> [nice_step(17.7), nice_step(13539), nice_step(0.9), nice_step(0)]
    [5, 5000, 0.2, 1]
    """
    if span <= 0:
        return 1
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * magnitude >= raw * (1 - 1e-9):
            step = m * magnitude
            return int(step) if step >= 1 else round(step, 12)
    return 10 * magnitude


def xml_text(s):
    """`s` escaped for XML text.

    >>> xml_text("a < b & c")
    'a &lt; b &amp; c'
    """
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def svg_text(x, y, s, size=11, anchor="start", weight=None, fill="#111827"):
    """An SVG <text> element."""
    bold = f' font-weight="{weight}"' if weight else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'fill="{fill}"{bold}>{xml_text(s)}</text>')


def splice(text, section, body, path):
    """`text` with what lies between the markers `section` (start, end) replaced by `body`.

    >>> splice("a\\n<!-- s -->\\nold\\n<!-- e -->\\nb", ("<!-- s -->", "<!-- e -->"), "new", "x")
    'a\\n<!-- s -->\\nnew\\n<!-- e -->\\nb'
    """
    start, end = section
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise RuntimeError(f"{path} lacks the markers {start} … {end}")
    return text[: i + len(start)] + "\n" + body + "\n" + text[j:]


def write_atomically(path, text):
    """Writes `text` to `path` through a temporary file, so a reader never sees half of it."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)

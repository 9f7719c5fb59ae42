"""Run inside an image (`python - < probe.py`): what the tests need to know about it, as JSON."""

import errno
import importlib.metadata as md
import json
import os
import pwd
import shutil
import subprocess
import sys

COMPILERS = ("gcc", "cc", "g++", "c++", "make", "cpp", "clang", "tcc", "as", "ld")
BUILD_PACKAGES = ("gcc", "g++", "cpp", "make", "binutils", "build-essential", "libc6-dev", "clang", "python3-dev")


def _writable(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        os.unlink(path)
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def _status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    return None


def _dpkg():
    out = []
    for block in open("/var/lib/dpkg/status").read().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(" "))
        if fields.get("Status", "").endswith(" installed"):
            out.append(fields["Package"])
    return out


def _named_like_compilers():
    hits = []
    for top in ("/usr", "/opt", "/bin", "/sbin", "/etc", "/var"):
        for dirpath, _, files in os.walk(top):
            hits += [os.path.join(dirpath, f) for f in files
                     if (f in COMPILERS[:6] or f.endswith(("-gcc", "-g++")) or f.startswith(("gcc-", "g++-")))
                     and os.access(os.path.join(dirpath, f), os.X_OK)]
    return hits


freeze = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all"], capture_output=True, text=True)
check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "user": pwd.getpwuid(os.getuid()).pw_name,
    "env": {k: os.environ.get(k) for k in ("HOME", "TMPDIR", "PATH")},
    "python": sys.version.split()[0], "executable": sys.executable,
    "lathe": md.version("lathe"),
    "freeze": freeze.stdout.splitlines(), "freeze_rc": freeze.returncode, "freeze_err": freeze.stderr[-2000:],
    "pip_check": check.stdout.splitlines(), "pip_check_rc": check.returncode,
    "write_root": _writable("/lathe-probe"), "write_venv": _writable(os.path.join(sys.prefix, "probe")),
    "write_tmp": _writable("/tmp/lathe-probe"),
    "cap_eff": _status("CapEff"), "no_new_privs": _status("NoNewPrivs"),
    "which": {c: shutil.which(c) for c in COMPILERS},
    "compiler_files": _named_like_compilers(),
    # gcc-12-base is libgcc's copyright files (a runtime dependency), not a compiler
    "build_packages": sorted(p for p in _dpkg() if p in BUILD_PACKAGES
                             or p.startswith(("gcc-", "g++-", "cpp-")) and not p.endswith("-base")),
}))

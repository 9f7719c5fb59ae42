"""Names and paths that cannot escape (pure: the one home of every such check; docs/storage.md).

Every location or name a user gives is checked here before anything is joined to it:

- `check_key(key)`: the path of `scheme://authority/path` (a claim's folder, a bucket's key or prefix, an
  https path), for every scheme alike: relative (no leading '/'), no empty, '.' or '..' segment, no
  backslash, no NUL; one trailing '/' (a prefix) is allowed. It names something *inside* its claim,
  bucket or container, so nothing in it may climb out.
- `check_local(path)`: a plain path or `file://path`: the user's own machine (`lathe run`) or the worker's
  container; absolute or relative to the working folder, but no '..' segment (write the path without
  it), no backslash, no NUL. '.' and doubled '/' are harmless there and kept.
- `check_name(name)`: one path segment that becomes a folder (publish.modelName, a candidate name): no
  '/', backslash or NUL, not '.' or '..', not hidden (a leading '.': Lathe's own staging names).
- `safe_join(base, relative)`: `base/relative` resolved, symlinks followed, refused when it lands outside
  `base` (a symlink inside a claim that points elsewhere).

The same rules as RE2 regular expressions (`LOCATION_RE_LOCAL`, `LOCATION_RE_URI`, `NAME_RE`) go into the
CRD's CEL rules (lathe.api.spec), so the API server refuses what it can see; resolution (symlinks) can
only be checked where the files are, by the worker.
"""

from __future__ import annotations

import os
import re
from pathlib import Path


class PathRefused(ValueError):
    """A name or path that is malformed or would reach outside its claim, bucket, prefix or folder."""


# -- the rules as RE2 (the API server's CEL `matches`) ------------------------------------------------
_C = r"[^/\\\x00]"  # a character of a segment
_SEG = rf"(?:[^/.\\\x00]{_C}*|\.[^/.\\\x00]{_C}*|\.\.{_C}+)"  # any segment but '.' and '..'
_LSEG = rf"(?:\.|{_SEG})"  # a local path may say '.'
KEY_RE = rf"(?:{_SEG}(?:/{_SEG})*/?)?"
SCHEME_RE = r"[a-z][a-z0-9+.-]*"
AUTHORITY_RE = r"[A-Za-z0-9](?:[A-Za-z0-9._:@-]*[A-Za-z0-9])?"
LOCATION_RE_URI = rf"^{SCHEME_RE}://{AUTHORITY_RE}(?:/{KEY_RE})?$"
LOCATION_RE_LOCAL = rf"^(?:file://)?(?:/*{_LSEG}(?:/+{_LSEG})*/*|/+)$"
NAME_RE = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$"


def _chars(value: str, what: str) -> None:
    if "\x00" in value:
        raise PathRefused(f"{what}: {value!r} contains a NUL byte")
    if "\\" in value:
        raise PathRefused(f"{what}: {value!r} contains a backslash ('\\'): separate folders with '/'")


def check_key(key: str, what: str = "path") -> str:
    """The key below a claim, bucket or host, without its trailing '/' ('' for the root)."""
    _chars(key, what)
    if key.startswith("/"):
        raise PathRefused(f"{what}: {key!r} is absolute; it must be relative to its claim, bucket or prefix "
                          "(one '/' after the name)")
    body = key[:-1] if key.endswith("/") else key
    if not body:
        return ""
    for seg in body.split("/"):
        if seg == "":
            raise PathRefused(f"{what}: {key!r} has an empty segment ('//')")
        if seg in (".", ".."):
            raise PathRefused(f"{what}: {key!r} has a '{seg}' segment; a location names what is inside its "
                              "claim, bucket or prefix, so it may not climb out or repeat itself")
    return body


def check_local(path: str, what: str = "path") -> str:
    """A plain local path (absolute or relative): no '..' segment, backslash or NUL."""
    _chars(path, what)
    if not path:
        raise PathRefused(f"{what}: empty path")
    if ".." in path.split("/"):
        raise PathRefused(f"{what}: {path!r} has a '..' segment; write the path without it "
                          "(e.g. the output of `realpath`)")
    return path


def check_name(name: str, what: str = "name") -> str:
    """One folder name: never '.', '..', hidden, or more than one segment."""
    _chars(name, what)
    if name in (".", ".."):
        raise PathRefused(f"{what}: {name!r} is not a name (it would be the folder itself or its parent)")
    if not name or "/" in name or name.startswith("."):
        raise PathRefused(f"{what}: {name!r} must be one folder name: letters, digits, '_', '-' and '.', "
                          "not starting with '.'")
    return name


def split_location(uri: str) -> tuple[str, str, str]:
    """`scheme://authority/key` -> (scheme, authority, key as given); a plain path -> ("file", "", path).
    Only splits: parse_uri (storage.uri) checks each part."""
    if "://" not in uri:
        return "file", "", uri
    scheme, rest = uri.split("://", 1)
    if scheme == "file":
        return "file", "", rest
    authority, sep, key = rest.partition("/")
    return scheme, authority, key if sep else ""


def check_location(uri: str, what: str = "location") -> str:
    """Any location a spec field holds: a local path, or scheme://authority/key (scheme-generic: which
    schemes are supported is storage.uri's business). Returns it unchanged."""
    scheme, authority, key = split_location(uri)
    if scheme == "file":
        check_local(key, what)
        return uri
    if not re.fullmatch(SCHEME_RE, scheme):
        raise PathRefused(f"{what}: {uri!r}: {scheme!r} is not a URI scheme")
    _chars(authority, what)
    if not authority:
        raise PathRefused(f"{what}: {uri!r} needs a name after {scheme}:// (a claim, bucket or host)")
    if not re.fullmatch(AUTHORITY_RE, authority):
        raise PathRefused(f"{what}: {uri!r}: {authority!r} is not a claim, bucket or host name (letters, digits, "
                          "'.', '-', '_', ':', '@', starting and ending with a letter or digit)")
    check_key(key, what)
    return uri


def safe_join(base: str | os.PathLike, relative: str = "", what: str = "path") -> Path:
    """`base/relative` with every symlink resolved; PathRefused when the result is not `base` or inside
    it. `relative` is checked as a key first. Returns the resolved path (what is then opened)."""
    rel = check_key(relative, what) if relative else ""
    root = os.path.realpath(base)
    target = os.path.realpath(os.path.join(root, rel)) if rel else root
    if target != root and not target.startswith(root.rstrip(os.sep) + os.sep):
        raise PathRefused(f"{what}: {relative!r} resolves to {target}, outside {base} (a symbolic link that "
                          "points out of it)")
    return Path(target)


__all__ = ["PathRefused", "check_key", "check_local", "check_name", "check_location", "safe_join",
           "split_location", "KEY_RE", "LOCATION_RE_URI", "LOCATION_RE_LOCAL", "NAME_RE"]

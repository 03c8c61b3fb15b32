"""A small package built here as a wheel, for the tests of users' own packages: what a
user's ``pip install ./wheel`` installs with no network."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

MODULE = '''
"""A package a user installed: made by tests/wheels.py."""

FACTOR = {factor}


def scaled(values):
    return values * FACTOR
'''


def build_wheel(folder: Path, name: str, factor: float = 3.0) -> Path:
    """``folder/NAME-0.1-py3-none-any.whl``: the module ``NAME`` with ``scaled()``."""
    files = {
        f"{name}/__init__.py": MODULE.format(factor=factor).encode(),
        f"{name}-0.1.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n".encode()
        ),
        f"{name}-0.1.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: casa-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = f"{name}-0.1.dist-info/RECORD"
    lines = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append(f"{path},sha256={digest},{len(data)}")
    lines.append(f"{record},,")
    files[record] = ("\n".join(lines) + "\n").encode()
    wheel = folder / f"{name}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel

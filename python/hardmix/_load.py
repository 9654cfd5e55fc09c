"""Loading hardmix's native libraries, with errors that say what to do.

``hardmix._C`` (CPU ops and every op schema) is imported after torch; on a CUDA
build of torch, ``libhardmix_cuda.so`` is loaded too when this build has it.
If loading fails, the error names the file, the torch found, the torch this
build was made against, and how to rebuild: never a later, distant
"operator hardmix::... does not exist".
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

PACKAGE_DIR = Path(__file__).resolve().parent
CUDA_LIBRARY = PACKAGE_DIR / "libhardmix_cuda.so"
REBUILD = (
    "Rebuild hardmix against the torch you run, without build isolation:\n"
    "  pip install --no-build-isolation --force-reinstall --no-deps <path to hardmix>"
)


def _built_against() -> str:
    try:
        from . import _build_info
    except ImportError:
        return "unknown (no _build_info: hardmix was not built by its CMake)"
    cuda = f", CUDA {_build_info.TORCH_CUDA_VERSION}" if _build_info.TORCH_CUDA_VERSION else ""
    return f"torch {_build_info.TORCH_VERSION}{cuda}"


def load_error(path: Path | str, cause: BaseException) -> ImportError:
    """The ImportError raised when a native library of hardmix cannot be loaded."""
    cuda = f" (CUDA {torch.version.cuda})" if torch.version.cuda else " (CPU build)"
    return ImportError(
        f"hardmix: could not load its native library {path}: {cause}\n"
        f"torch found: {torch.__version__}{cuda} at {Path(torch.__file__).parent}\n"
        f"hardmix was built against: {_built_against()}\n{REBUILD}"
    )


def load_library(path: Path | str) -> None:
    """Load one shared library of ops into torch, or raise :func:`load_error`."""
    try:
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError) as e:
        raise load_error(path, e) from e


def load() -> bool:
    """Load the CPU library, and the CUDA one where it applies.

    Returns whether CUDA kernels were loaded.
    """
    try:
        importlib.import_module("hardmix._C")
    except ImportError as e:
        found = sorted(p.name for p in PACKAGE_DIR.glob("_C*"))
        where = PACKAGE_DIR / (found[0] if found else "_C.abi3.so")
        raise load_error(where, e) from e
    if torch.version.cuda and CUDA_LIBRARY.exists():
        load_library(CUDA_LIBRARY)
        return True
    return False

"""Generate the synthetic data set once per parameter set, atomically, and reuse it afterwards."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from anomaly.data.errors import DataError
from anomaly.data.synthetic.generate import GENERATOR_VERSION, category_names, generate

STAMP = ".synthetic.json"
SIGNATURE = inspect.signature(generate)


def _parameters(params: dict[str, Any]) -> dict[str, Any]:
    """The full parameter set (defaults filled in) that identifies a generated data set."""
    signature = SIGNATURE
    unknown = sorted(set(params) - set(signature.parameters) - {"root"})
    if unknown:
        allowed = ", ".join(p for p in signature.parameters if p != "root")
        raise DataError(f"Unknown synthetic data parameter(s) {', '.join(unknown)}; use only: {allowed}.")
    full = {k: p.default for k, p in signature.parameters.items() if k != "root"}
    full.update(params)
    full.pop("workers")  # threads do not change the output
    stamp: dict[str, Any] = {"generator": GENERATOR_VERSION}
    for key in sorted(full):
        stamp[key] = category_names(full[key]) if key == "categories" else int(full[key])
    return stamp


def read_stamp(root: Path) -> dict[str, Any] | None:
    """The parameters a finished data set under ``root`` was generated with, or ``None``."""
    try:
        return json.loads((Path(root) / STAMP).read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only, nothing is sent
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(root: Path) -> None:
    """Delete work folders that generations killed mid-way left next to ``root``."""
    for prefix in (f".{root.name}.tmp-", f".{root.name}.old-"):
        for path in root.parent.glob(prefix + "*"):
            pid = path.name[len(prefix) :].split("-")[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)


def ensure_synthetic(root: str | Path, generate: bool | str = True, default_root: str | Path | None = None,
                     **params: Any) -> Path:
    """Return ``root`` holding the synthetic data set for ``params``, generating it when needed.

    Generation writes into a temporary sibling folder that is renamed into place only once complete,
    with a stamp file (``.synthetic.json``) of the parameters; a set generated with other parameters
    (or by another generator version) is replaced, and a killed generation leaves no partial set.

    Args:
        root: the data set folder (``data.root``).
        generate: ``True`` generates a missing set at ``root``; ``"auto"`` (the configs' choice) only at
            ``default_root``, so a mistyped ``data.root`` is an error rather than 51 MB written there.
        default_root: where ``"auto"`` generates (``${paths.data_dir}/synthetic``).
        **params: keyword arguments of :func:`anomaly.data.synthetic.generate`.

    Raises:
        DataError: ``root`` holds other files (not a synthetic data set), has no set and generating there
            was not asked for, or a parameter is unknown.
    """
    root = Path(root).expanduser().absolute()
    wanted = _parameters(params)
    stamp = read_stamp(root)
    if stamp == wanted:
        return root
    if root.exists() and stamp is None and (not root.is_dir() or any(root.iterdir())):
        raise DataError(
            f"data.root={root} exists and is not a synthetic data set (no {STAMP}); "
            "point data.root at a new folder or delete this one."
        )
    if stamp is None and not _may_generate(root, generate, default_root):
        state = "is an empty folder" if root.exists() else "does not exist"
        place = f", {Path(default_root).expanduser().absolute()}" if default_root is not None else ""
        raise DataError(
            f"data.root={root} {state} (the synthetic set is generated only at its default place{place}); "
            "fix data.root, or add data.prepare.generate=true to generate the set there."
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(root)
    work = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-{os.getpid()}-", dir=root.parent))
    try:
        _generate(work, params)
        (work / STAMP).write_text(json.dumps(wanted, indent=1, sort_keys=True) + "\n")
        work.chmod(0o755)  # mkdtemp makes it private; the data set is ordinary readable data
        _install(work, root, wanted)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return root


def _generate(work: Path, params: dict[str, Any]) -> None:
    """The generator (module-level, so ``ensure_synthetic``'s ``generate`` option does not hide it)."""
    generate(work, **params)


def _may_generate(root: Path, generate: bool | str, default_root: str | Path | None) -> bool:
    """Whether a missing set may be generated at ``root`` (see ``ensure_synthetic``'s ``generate``)."""
    if str(generate).lower() == "auto":
        return default_root is not None and root.resolve() == Path(default_root).expanduser().resolve()
    if isinstance(generate, bool):
        return generate
    raise DataError(f"data.prepare.generate={generate} is not valid; use auto, true or false.")


def _install(work: Path, root: Path, wanted: dict[str, Any]) -> None:
    """Rename the finished ``work`` folder to ``root``, moving an outdated set out of the way first."""
    old: Path | None = None
    if root.exists():
        if read_stamp(root) == wanted:  # another process finished the same set first
            return
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-{os.getpid()}-", dir=root.parent))
        os.rename(root, old / "set")
    try:
        os.rename(work, root)
    except OSError:
        if read_stamp(root) != wanted:
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

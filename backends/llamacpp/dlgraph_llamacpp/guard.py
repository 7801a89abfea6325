"""Whether llama.cpp's extra buffer types may be used on this machine, decided once per machine.

llama.cpp's CPU backend can route matrix products through "extra buffer types": AMX tiles on
recent Intel Xeons, weights repacked for wider SIMD elsewhere. Where the CPU reports a feature
that the OS or hypervisor has not enabled for every thread (AMX's tile data needs a per-thread
permission, llama.cpp PR 26954; a CPU variant chosen from CPUID, issue 28328), the first matrix
product kills the process with SIGILL: the application embedding dlgraph with it.

So the choice is tried in a child process first (`probe.py`: the model loaded, a target scored
and text generated through both paths, with the parent's thread count). A child killed by a
signal means they stay off; a child that dies even with them off means llama.cpp cannot run
here at all, which is a clear error, never a dead parent. The verdict is cached on disk, keyed
by what decides it: the llama.cpp build, the CPU (model and flags) and the model file.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

import attrs

import dlgraph as dg
from dlgraph_llamacpp.native import SIMULATE_CRASH

logger = logging.getLogger(__name__)

ExtraBuffers = Literal["auto"] | bool
FORMAT = "dlgraph.llamacpp.extra_buffers/1"
PROBE_TIMEOUT_S = 300.0
MAX_FILE_BYTES = 16_384
"""A verdict file is a few hundred bytes; anything bigger is not ours and is not read."""
CACHE_DIR = "DLGRAPH_CACHE_DIR"


@attrs.frozen
class Verdict:
    """Whether extra buffer types are in use, why, and where the decision came from."""

    enabled: bool
    reason: str
    source: Literal["option", "probe", "cache", "unchecked"]
    """"unchecked": the child failed for another reason than the CPU (a bad model file, a
    timeout); extra buffer types stay off for this load and nothing is cached."""


@attrs.frozen
class _Outcome:
    """How a child process ended: survived, killed by a signal, or failed otherwise."""

    survived: bool
    signal: str | None = None
    detail: str = ""


def cache_dir() -> Path:
    """``$DLGRAPH_CACHE_DIR``, else ``$XDG_CACHE_HOME/dlgraph``, else ``~/.cache/dlgraph``."""
    if os.environ.get(CACHE_DIR):
        return Path(os.environ[CACHE_DIR])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dlgraph"


def cpu_name() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def _cpu_flags() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith(("flags", "Features")):
            return " ".join(sorted(line.partition(":")[2].split()))
    return ""


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def llama_cpp_version() -> str:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _library_dir() -> Path | None:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "lib"


def _build_identity() -> str:
    """The compiled llama.cpp in use: a rebuild (same version, other flags) is a new build."""
    folder = _library_dir()
    files = sorted(folder.glob("*.so*")) if folder and folder.is_dir() else []
    facts = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    return hashlib.sha256(repr(facts).encode()).hexdigest()[:16]


def machine_key(model: Path) -> dict[str, Any]:
    """Everything that decides whether extra buffer types crash: build, CPU, model file."""
    stat = model.stat()
    return {
        "llama_cpp_python": llama_cpp_version(),
        "build": _build_identity(),
        "cpu": cpu_name(),
        "cpu_flags": hashlib.sha256(_cpu_flags().encode()).hexdigest()[:16],
        "model": str(model.resolve()),
        "model_bytes": stat.st_size,
        "model_mtime_ns": stat.st_mtime_ns,
        "simulated_crash": os.environ.get(SIMULATE_CRASH, ""),
    }


def verdict_file(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir() / "llamacpp" / f"extra-buffers-{digest}.json"


def decide(model: Path, option: ExtraBuffers, threads: int) -> Verdict:
    """Extra buffer types on or off for `model`: as `option` says, else as the cached verdict
    says, else as a child process finds. Blocks (run it in a worker thread); raises
    `BackendUnavailable` when llama.cpp cannot run on this CPU at all."""
    if option != "auto":
        return Verdict(bool(option), f"extra_buffers={option} was given", "option")
    key = machine_key(model)
    path = verdict_file(key)
    cached = read_verdict(path, key)
    if cached is not None:
        logger.debug("extra buffer types %s (%s; %s)", _word(cached.enabled), cached.reason, path)
        return cached
    verdict = _probe(model, threads)
    if verdict.source == "probe":
        _write_verdict(path, key, verdict)
    return verdict


def machine_verdict(model: Path | None = None) -> Verdict:
    """What ``extra_buffers="auto"`` decides on this machine for `model` (the default model
    when None): for starting other programs that run llama.cpp, such as ``llama-server``
    (``--no-repack`` when off) or llama-cpp-python's server. Blocks; may start the check."""
    from dlgraph_llamacpp.model import default_model_path
    from dlgraph_llamacpp.threads import allowed_cores

    return decide(model or default_model_path(), "auto", len(allowed_cores()))


def _probe(model: Path, threads: int) -> Verdict:
    cpu = cpu_name()
    tried = _try(model, True, threads)
    if tried.survived:
        verdict = Verdict(True, f"a test process ran them on this CPU ({cpu})", "probe")
        logger.info("llama.cpp's extra buffer types (AMX, repacked weights) on: %s", verdict.reason)
        return verdict
    if tried.signal is None:  # not the CPU: a bad model file, a timeout; the load will say
        logger.info(
            "llama.cpp's extra buffer types off: the check could not run (%s)", tried.detail
        )
        return Verdict(False, f"the check could not run: {tried.detail}", "unchecked")
    fallback = _try(model, False, threads)
    if fallback.signal is not None:
        raise dg.BackendUnavailable(_unusable(model, cpu, fallback.signal))
    verdict = Verdict(
        False,
        f"a test process using them died by {tried.signal} on this CPU ({cpu}); "
        f"one without them {'ran' if fallback.survived else 'failed otherwise'}",
        "probe",
    )
    logger.warning(
        "llama.cpp's extra buffer types (AMX, repacked weights) stay off: %s. "
        "Decided once for this machine; extra_buffers=True overrides.",
        verdict.reason,
    )
    return verdict


def _try(model: Path, extra_buffers: bool, threads: int) -> _Outcome:
    command = [
        sys.executable, "-m", "dlgraph_llamacpp.probe", str(model),
        "--extra-buffers", "on" if extra_buffers else "off",
        "--threads", str(threads),
    ]  # fmt: skip
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, errors="replace", timeout=PROBE_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return _Outcome(False, detail=f"no answer within {PROBE_TIMEOUT_S:.0f} s")
    if done.returncode == 0:
        return _Outcome(True)
    if done.returncode < 0:
        return _Outcome(False, signal=_signal_name(-done.returncode))
    last = (done.stderr.strip().splitlines() or ["no message"])[-1]
    return _Outcome(False, detail=f"exit status {done.returncode}: {last[:300]}")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _unusable(model: Path, cpu: str, how: str) -> str:
    version = llama_cpp_version()
    return (
        f"llama.cpp cannot run on this CPU ({cpu}): a test process loading {model.name} died "
        f"by {how} even with extra buffer types off. The llama.cpp of llama-cpp-python "
        f"{version} ({_library_dir()}) uses instructions this machine does not allow (pip "
        "builds it with -march=native; a wheel built elsewhere keeps that machine's). Rebuild "
        'it for any x86-64 CPU: CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --force-reinstall '
        f"--no-cache-dir --no-binary llama-cpp-python llama-cpp-python=={version}"
    )


def read_verdict(path: Path, key: dict[str, Any]) -> Verdict | None:
    """The verdict stored at `path` for `key`; None when there is none or it is not one we
    wrote for this key (the file is untrusted: a bad one is ignored and replaced)."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or set(data) != {"format", "key", "enabled", "reason"}:
            raise ValueError("not a verdict record")
        if data["format"] != FORMAT or data["key"] != key:
            raise ValueError("written for another format, build, CPU or model file")
        enabled, reason = data["enabled"], data["reason"]
        if not isinstance(enabled, bool) or not isinstance(reason, str) or len(reason) > 1000:
            raise ValueError("fields of the wrong type")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeError are ValueErrors
        logger.info("ignoring %s: %s", path, error)
        return None
    return Verdict(enabled, reason, "cache")


def _write_verdict(path: Path, key: dict[str, Any], verdict: Verdict) -> None:
    record = {"format": FORMAT, "key": key, "enabled": verdict.enabled, "reason": verdict.reason}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".verdict-", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                json.dump(record, stream, indent=1)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as error:
        logger.warning("could not keep the extra-buffer verdict in %s: %s", path, error)


def _word(enabled: bool) -> str:
    return "on" if enabled else "off"

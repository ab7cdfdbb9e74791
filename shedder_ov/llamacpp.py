"""llama.cpp, the runtime users would otherwise pick, built and timed on the same machine.

Built from the llama-cpp-python sdist on PyPI (it vendors llama.cpp, with its
convert_hf_to_gguf.py): native CPU flags, only llama-bench and llama-quantize. AMX is switched
off where the CPU advertises it but its tiles fault (`cpu.probe_amx`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ShedderError

LLAMA_CPP_PYTHON = "0.3.36"  # the sdist whose vendored llama.cpp is built
GGUF_TYPES = {"int8": "Q8_0", "int4": "Q4_0"}  # llama.cpp's type at each of our weight precisions
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


@dataclass(frozen=True)
class LlamaCpp:
    """A llama.cpp build: `bin` holds llama-bench and llama-quantize, `source` convert_hf_to_gguf.py."""

    bin: Path
    source: Path

    @classmethod
    def at(cls, folder: str | Path) -> "LlamaCpp":
        """The build `build()` made in `folder`, or a clear error naming what is missing."""
        folder = Path(folder)
        found = cls(folder / "build" / "bin", folder / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp")
        for path in (found.bin / "llama-bench", found.bin / "llama-quantize", found.source / "convert_hf_to_gguf.py"):
            if not path.is_file():
                raise ShedderError(f"llama.cpp: {path} not found (build it: python scripts/bench_vs_llamacpp.py "
                                  f"--build-only --llama-cpp {folder})")
        return found

    def to_gguf(self, checkpoint: Path, folder: Path) -> dict[str, Path]:
        """The checkpoint converted by llama.cpp's own script (f16), then quantized to each of
        GGUF_TYPES; files made once, each through a temporary name. For speed only: the converter
        sees the config and weights alone and takes its built-in GPT-NeoX vocabulary (cut to the
        model's vocab size), since its BPE pre-tokenizer check refuses tokenizers it does not know."""
        folder.mkdir(parents=True, exist_ok=True)
        f16 = folder / "f16.gguf"
        if not f16.is_file():
            staged = folder / "weights"
            shutil.rmtree(staged, ignore_errors=True)
            staged.mkdir()
            for file in Path(checkpoint).iterdir():
                if file.suffix == ".safetensors" or file.name in ("config.json", "model.safetensors.index.json"):
                    (staged / file.name).symlink_to(file.resolve())
            self._run([sys.executable, str(self.source / "convert_hf_to_gguf.py"), str(staged), "--outtype", "f16",
                       "--outfile", str(folder / "f16.part")], f"convert {checkpoint}")
            (folder / "f16.part").rename(f16)
            shutil.rmtree(staged)
        files = {}
        for tag, kind in GGUF_TYPES.items():
            files[tag] = folder / f"{kind.lower()}.gguf"
            if not files[tag].is_file():
                partial = files[tag].with_suffix(".part")
                self._run([str(self.bin / "llama-quantize"), str(f16), str(partial), kind, str(os.cpu_count())], f"quantize {f16}")
                partial.rename(files[tag])
        return files

    def bench(self, gguf: Path, threads: int, repeats: int, prompts: tuple[int, ...], new_tokens: int) -> dict:
        """llama-bench's prefill tok/s at each prompt length and decode tok/s after a prompts[0] prompt."""
        def run(*args: str) -> list[dict]:
            command = [str(self.bin / "llama-bench"), "-m", str(gguf), "-t", str(threads), "-r", str(repeats), "-o", "json", *args]
            return json.loads(self._run(command, f"llama-bench {gguf}"))

        prefill = run("-p", ",".join(map(str, prompts)), "-n", "0")
        decode = run("-p", "0", "-n", str(new_tokens), "-d", str(prompts[0]))
        return {"prefill_tok_s": {r["n_prompt"]: r["avg_ts"] for r in prefill}, "decode_tok_s": decode[0]["avg_ts"],
                "file_mb": gguf.stat().st_size / 2**20, "build": decode[0].get("build_commit")}

    @staticmethod
    def _run(command: list[str], what: str) -> str:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ShedderError(f"llama.cpp: {what} failed ({reason[:200]})")
        return done.stdout


def build(folder: str | Path, amx_off: bool) -> LlamaCpp:
    """Download the sdist into `folder`, build llama-bench + llama-quantize there (once)."""
    folder = Path(folder)
    try:
        return LlamaCpp.at(folder)
    except ShedderError:
        pass
    source = folder / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
    if not source.is_dir():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(folder)], check=True)
        with tarfile.open(folder / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz") as archive:
            archive.extractall(folder, filter="data")
    options = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF",
               "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF"]
    if amx_off:
        options += [f"-DCMAKE_C_FLAGS={NO_AMX}", f"-DCMAKE_CXX_FLAGS={NO_AMX}"]
    print(f"building llama.cpp {'(AMX off: its tiles fault here) ' if amx_off else ''}in {folder / 'build'}", flush=True)
    subprocess.run(["cmake", "-S", str(source), "-B", str(folder / "build"), "-G", "Ninja", *options], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(folder / "build"), "--target", "llama-bench", "llama-quantize",
                    "-j", str(os.cpu_count())], check=True, stdout=subprocess.DEVNULL)
    return LlamaCpp.at(folder)

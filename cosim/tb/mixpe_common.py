"""What both MixPE testbenches share: reading a case's quantflow images, the
golden expectation, and the result record (cosim.report fields)."""
from __future__ import annotations

from dataclasses import dataclass

from golden.mixpe_config import MixPEConfig

from cosim.tb.common import inject_errors


@dataclass(frozen=True, kw_only=True)
class MixPECaseData:
    """A case's images as quantflow.load_mixpe verified them (a MixPEImages:
    config, M, N, m_tiles, n_tiles, macs, act/code/scale words, ...; they read as
    this object's attributes) and the result words the scoreboard expects."""
    images: object
    expected_words: list[int]   # result words in emission order (golden.mixpe)

    def __getattr__(self, name: str):
        if name == "images":  # not set yet (copy, unpickling): no endless recursion
            raise AttributeError(name)
        return getattr(self.images, name)


def load_case(job: dict) -> MixPECaseData:
    """Read the images quantflow emitted into job["data_dir"] (checksums are
    verified by load_mixpe) and compute the expected result words with
    golden.mixpe.mixpe_acc from the *decoded* a, q, s2, z."""
    from golden.mixpe import mixpe_acc
    from quantflow import load_mixpe
    from quantflow.mixpe import pack_result_words

    config = MixPEConfig(**job["config"])
    images = load_mixpe(job["data_dir"], config)
    acc = mixpe_acc(images.a, images.q, images.s2, images.z, config)
    expected = pack_result_words(acc, config)
    inject_errors(expected, job.get("corrupt_expected"))
    return MixPECaseData(images=images, expected_words=expected)


def describe_mismatch(data: MixPECaseData):
    """Closure naming (tile, m, n, got, expected) of a mismatching result word."""
    from quantflow.pack import unpack_words
    from golden.formats import ACC_BITS

    cfg = data.config

    def describe(i: int, got: int, exp: int) -> str:
        tile, m = divmod(i, cfg.rows)
        tn, tm = divmod(tile, data.m_tiles)
        g = unpack_words([got], ACC_BITS, cfg.cols, signed=True)[0]
        e = unpack_words([exp], ACC_BITS, cfg.cols, signed=True)[0]
        bad = [(tn * cfg.cols + c, int(g[c]), int(e[c])) for c in range(cfg.cols)
               if g[c] != e[c]]
        return (f"result word {i} (tile n{tn} m{tm}, row {tm * cfg.rows + m}): "
                + ", ".join(f"acc[{tm * cfg.rows + m},{n}] got {gv} expected {ev}"
                            for n, gv, ev in bad[:4]))
    return describe

"""The CPU a figure was measured on, for every benchmark's header.

A model name alone is not enough: one "AMD EPYC" VM has AVX-512 VNNI and BF16, another only AVX2,
and Canon's kernels (and the peers') take different paths on each.
"""

import platform

EXTENSIONS = ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni",
              "avx_vnni", "avx512_bf16", "amx_int8"]


def _field(name):
    try:
        for line in open("/proc/cpuinfo"):
            if line.split(":", 1)[0].strip() == name:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model():
    return _field("model name") or platform.processor() or "unknown CPU"


def cpu_extensions():
    flags = set((_field("flags") or "").split())
    return [e for e in EXTENSIONS if e in flags]


def cpu_label():
    """e.g. 'AMD EPYC (family 23 model 49; avx2 fma f16c)'."""
    fam, mod = _field("cpu family"), _field("model")
    where = f"family {fam} model {mod}; " if fam and mod else ""
    return f"{cpu_model()} ({where}{' '.join(cpu_extensions()) or 'no AVX2'})"


if __name__ == "__main__":
    print(cpu_label())

"""Does the compiler vectorise the portable sampler kernels? Count packed and scalar float64 instructions in
the assembly of the hot functions, for x86-64 (the SSE2 baseline) and, where the Rust target is installed
(`rustup target add aarch64-unknown-linux-gnu`), for aarch64 (NEON).

    python benches/check_vector_asm.py [--target x86_64-unknown-linux-gnu,aarch64-unknown-linux-gnu]

The library is compiled as an rlib with `--emit asm` and LTO off: with thin LTO the pre-link pass leaves loop
vectorisation to the link step, so the rlib's assembly would show scalar loops that the shipped library does
not have. On x86-64 the counts are those of the baseline copy of each kernel (the outer function; the AVX2
and AVX-512 copies are separate functions). A kernel counts as vectorised when its polynomials appear in
packed form (at least 30 packed instructions) with no fused multiply-add (the levels must round alike). The
scalar instructions are the loops' tails: each kernel keeps a scalar copy for the last few elements, and
static counts weigh that copy as much as the packed loop that does nearly all the work.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Symbol fragments of the functions checked: the log-uniform draws, P(k), the expected counts.
KERNELS = (
    "LogUniform$u20$as$u20$zipfnce..sampler..Distribution$GT$10draw_above",
    "LogUniform$u20$as$u20$zipfnce..sampler..Distribution$GT$9prob_into",
    "counts15expected_counts17",
)
PACKED = {
    "x86_64": r"\b(mulpd|addpd|subpd|divpd|maxpd|minpd)\s+[^\n]*%xmm",
    "aarch64": r"\b(fmul|fadd|fsub|fdiv|fmax|fmin|fmaxnm|fminnm)\s+v\d+\.2d",
}
SCALAR = {
    "x86_64": r"\b(mulsd|addsd|subsd|divsd|maxsd|minsd)\b",
    "aarch64": r"\b(fmul|fadd|fsub|fdiv|fmax|fmin|fmaxnm|fminnm)\s+d\d+",
}
FUSED = {"x86_64": r"\bvfn?m(add|sub)", "aarch64": r"\b(fmadd|fmsub|fmla|fmls|fnmadd)\b"}


def functions(asm: str):
    out, cur = {}, None
    for line in asm.splitlines():
        m = re.match(r"^(_ZN[^:\s]+):\s*$", line)
        if m:
            cur = m.group(1)
            out[cur] = []
        elif cur:
            out[cur].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def check(target: str) -> bool:
    arch = target.split("-")[0]
    tdir = f"/tmp/zipfnce-asm-{arch}"
    env = dict(os.environ, CARGO_PROFILE_RELEASE_LTO="false", CARGO_TARGET_DIR=tdir)
    cmd = [
        "cargo",
        "rustc",
        "--release",
        "--locked",
        "--lib",
        "--crate-type",
        "rlib",
        "--target",
        target,
        "--",
        "--emit",
        "asm",
    ]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        print(
            f"{target}: cannot build ({r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode})"
        )
        return False
    files = sorted(glob.glob(f"{tdir}/{target}/release/deps/zipfnce-*.s"), key=os.path.getmtime)
    funcs = functions(open(files[-1]).read())
    ok = True
    print(
        f"## {target}\n\n| function | packed f64 ops | scalar f64 ops | fused multiply-adds |\n|---|---:|---:|---:|"
    )
    for frag in KERNELS:
        for name, body in funcs.items():
            if frag not in name:
                continue
            packed = len(re.findall(PACKED[arch], body))
            scalar = len(re.findall(SCALAR[arch], body))
            fused = len(re.findall(FUSED[arch], body))
            if packed + scalar < 20:  # a thin wrapper (e.g. the branch to the hand-written kernels)
                continue
            short = re.sub(r"17h[0-9a-f]{16}E$", "", name)[-60:]
            print(f"| …{short} | {packed} | {scalar} | {fused} |")
            ok &= packed >= 30 and fused == 0
    print()
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="x86_64-unknown-linux-gnu,aarch64-unknown-linux-gnu")
    args = ap.parse_args()
    results = [check(t) for t in args.target.split(",")]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()

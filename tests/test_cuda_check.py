"""fastreg.cuda.check: the compile-for-real-GPUs check (``python -m fastreg.cuda.check``).

The PTX and ptxas readers, the kernel table, the command line and the recording of launch
signatures (under the simulator) run everywhere numba-cuda imports. Compiling needs the
``cuda-build`` extra (NVVM, NVRTC, nvJitLink, ptxas) and no simulator: those tests skip with the
reason otherwise; CI runs them in the step that installs the extra (FASTREG_TEST_REQUIRE=cuda-build
turns their skips into failures), and the full check runs there as its own command. Only a few
kernels are compiled here, for one target.
"""
import json
import os

import numpy as np
import pytest

import fastreg.cuda as fcuda

try:
    from fastreg.cuda import check
except Exception as exc:  # numba-cuda missing: nothing here can run
    pytest.skip(f"fastreg.cuda.check does not import ({exc}); pip install 'fastreg-kernels[cuda]'",
                allow_module_level=True)

_REQUIRED = "cuda-build" in os.environ.get("FASTREG_TEST_REQUIRE", "").split(",")


def _tools_or_skip():
    try:
        return check.find_tools()
    except check.ToolsMissing as exc:
        if _REQUIRED:
            pytest.fail(f"FASTREG_TEST_REQUIRE has cuda-build but the tools are missing: {exc}")
        pytest.skip(f"compilers for the check not usable here: {exc}")


@pytest.fixture(scope="module")
def signatures():
    """The launch signatures of every kernel, recorded once under the simulator."""
    return check.record_signatures()


# --- ptxas output ---------------------------------------------------------------------------------

PTXAS_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z6kernel' for 'sm_90a'
ptxas info    : Function properties for _Z6kernel
    16 bytes stack frame, 12 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 2048 bytes smem, 528 bytes cmem[0]
"""


def test_parse_ptxas():
    assert check.parse_ptxas(PTXAS_LOG) == {"spill_st": 12, "spill_ld": 8, "regs": 255,
                                            "barriers": 1, "shared": 2048, "local": 16}
    quiet = ("    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
             "ptxas info    : Used 24 registers, used 0 barriers, 528 bytes cmem[0]\n")
    assert check.parse_ptxas(quiet) == {"spill_st": 0, "spill_ld": 0, "regs": 24, "barriers": 0,
                                        "shared": 0, "local": 0}
    older = "ptxas info    : Used 40 registers, 32 bytes lmem, 352 bytes cmem[0]\n"
    assert check.parse_ptxas(older)["local"] == 32
    with pytest.raises(ValueError, match="registers"):
        check.parse_ptxas("ptxas fatal   : Unexpected EOF\n")


# --- FMA contraction ------------------------------------------------------------------------------

def _ptx(*lines):
    return "\n".join(["//", ".version 9.5", ".visible .entry k(", "\t.param .u64 k_param_0", ")",
                      "{", *[f"\t{ln}" for ln in lines], "\tret;", "}"])


@pytest.mark.parametrize("body, expected", [
    (["mul.rn.f32 %f3, %f1, %f2;", "add.f32 %f4, %f3, %f1;"], (0, 0)),      # mul.rn: never fused
    (["mul.f32 %f3, %f1, %f2;", "add.f32 %f4, %f3, %f1;"], (0, 1)),         # ptxas may fuse
    (["mul.f64 %fd3, %fd1, %fd2;", "sub.f64 %fd4, %fd1, %fd3;"], (0, 1)),
    (["mul.f32 %f3, %f1, %f2;", "neg.f32 %f5, %f3;", "add.f32 %f4, %f5, %f1;"], (0, 1)),
    (["mul.f32 %f3, %f1, %f2;", "add.rn.f32 %f4, %f3, %f1;"], (0, 0)),      # add.rn: not fused
    (["mul.f32 %f3, %f1, %f2;", "st.global.f32 [%rd1], %f3;"], (0, 0)),     # a lone multiply
    (["fma.rn.f32 %f4, %f1, %f2, %f3;", "fma.rn.f64 %fd4, %fd1, %fd2, %fd3;"], (2, 0)),
    (["mad.lo.s32 %r4, %r1, %r2, %r3;", "mul.lo.s64 %rd3, %rd1, %rd2;",
      "add.s64 %rd4, %rd3, %rd1;"], (0, 0)),                                 # integers
    (["@%p1 fma.rn.f32 %f4, %f1, %f2, %f3;"], (1, 0)),                       # predicated
])
def test_fma_findings(body, expected):
    assert check.fma_findings(_ptx(*body)) == expected


# --- the 64-bit counter ---------------------------------------------------------------------------

def _counter_ptx(*lines):
    return _ptx("ld.param.u64 %rd1, [k_param_3];", "mov.u32 %r1, %tid.x;",
                "cvt.u64.u32 %rd2, %r1;", *lines)


def test_counter_findings_good():
    ok = _counter_ptx("add.s64 %rd3, %rd1, %rd2;", "shr.u64 %rd4, %rd3, 32;",
                      "and.b64 %rd5, %rd3, 4294967295;", "mul.lo.s64 %rd6, %rd5, 3528531795;",
                      "cvt.rn.f32.u64 %f1, %rd6;")     # words (after the multiply) may be floats
    assert check.counter_findings(ok, 3) == []
    unpacked = _counter_ptx("add.s64 %rd3, %rd1, %rd2;", "mov.b64 {%r2, %r3}, %rd3;")
    assert check.counter_findings(unpacked, 3) == []


def test_counter_findings_bad():
    narrowed = _counter_ptx("cvt.u32.u64 %r2, %rd1;", "add.s32 %r3, %r2, %r1;",
                            "mul.wide.u32 %rd4, %r3, -766435501;", "shr.u64 %rd5, %rd4, 32;")
    (problem,) = check.counter_findings(narrowed, 3)
    assert "high 32-bit word" in problem
    floated = _counter_ptx("cvt.rn.f64.u64 %fd1, %rd1;", "add.f64 %fd2, %fd1, %fd1;",
                           "cvt.rzi.u64.f64 %rd3, %fd2;", "shr.u64 %rd4, %rd3, 32;")
    (problem,) = check.counter_findings(floated, 3)
    assert "floating-point" in problem and "cvt.rn.f64.u64" in problem
    assert "never loaded" in check.counter_findings(_counter_ptx(), 5)[0]


# --- signatures, policy and the table -------------------------------------------------------------

def test_type_encoding_round_trip():
    from numba.core import types
    arr = ["array", "float32", 2, "C"]
    assert check.decode_type(arr) == types.Array(types.float32, 2, "C")
    assert check.type_str(arr) == "float32[:, ::1]"
    assert check.type_str(["array", "uint8", 1, "A"]) == "uint8[:]"
    assert check.decode_type(["scalar", "uint64"]) == types.uint64
    assert check.decode_type(["scalar", "bool"]) == types.boolean
    with pytest.raises(ValueError, match="unsupported"):
        check.decode_type(["scalar", "UniTuple(int64 x 2)"])
    assert check.dtype_label([arr, ["scalar", "uint64"], ["array", "float64", 1, "C"]]) == \
        "f32/f64"
    assert check.dtype_label([["scalar", "uint64"]]) == "-"


def test_every_kernel_has_a_policy_and_is_launched(signatures):
    kernels = check.discover()
    assert "dropout._dropout_kernel" in kernels and "optim._adam_kernel" in kernels
    assert check.coverage_problems(kernels, signatures, sorted(kernels)) == []
    assert set(signatures) == set(kernels)
    assert "check" not in check.kernel_modules()
    # a new kernel without a policy entry, or never launched, is reported
    problems = check.coverage_problems(dict(kernels, **{"x._new_kernel": None}), signatures,
                                       sorted(kernels) + ["x._new_kernel"])
    assert any("x._new_kernel: no entry in fastreg.cuda.check.POLICY" in p for p in problems)
    assert any("x._new_kernel: never launched" in p for p in problems)


def test_recorded_signatures_are_the_launched_ones(signatures):
    u64 = ["scalar", "uint64"]
    for dt in ("float32", "float64"):
        arr = ["array", dt, 1, "C"]
        assert [arr, u64, u64, u64, ["scalar", "int64"], ["scalar", "int64"],
                ["scalar", "int64"], u64, ["scalar", dt], arr] in \
            signatures["dropout._dropout_kernel"]
    # every float kernel of the element-wise families is seen in both float dtypes
    for key in ("optim._sgd_kernel", "optim._adam_kernel", "penalty._penalty_grad_kernel",
                "batchnorm._reduce_rows_kernel", "batchnorm._reduce_cols_kernel"):
        dtypes = {check.dtype_label(s).split("/")[0] for s in signatures[key]}
        assert dtypes == {"f32", "f64"}, key
    # counters, keys and thresholds are uint64 wherever they appear
    import inspect
    kernels = check.discover()
    for key, sigs in signatures.items():
        names = list(inspect.signature(kernels[key].py_func).parameters)
        for sig in sigs:
            for name, desc in zip(names, sig):
                if name in check.UINT64_ARGS:
                    assert desc == u64, (key, name, desc)


def test_table_format():
    ok = {"kernel": "dropout._dropout_kernel", "dtype": "f32", "arch": "sm_90a", "regs": 26,
          "spill_st": 0, "spill_ld": 0, "local": 0, "shared": 0, "fma": 0, "contractible": 0,
          "flags": ["hot", "exact"], "problems": [], "error": None}
    bad = dict(ok, kernel="optim._sgd_kernel", spill_st=8, spill_ld=4, fma=2, contractible=1,
               problems=["hot kernel spills"])
    broken = dict(ok, kernel="augment._mix_kernel", flags=[], problems=["does not compile"],
                  error="TypingError: ...")
    header, rule, *lines = check.table_lines([ok, bad, broken])
    assert header.split() == ["kernel", "dtype", "arch", "regs", "spill", "st/ld", "local",
                              "shared", "fma", "promises", "result"]
    assert set(rule) == {"-"} and len(rule) == len(header)
    assert lines[0].split() == ["dropout._dropout_kernel", "f32", "sm_90a", "26", "0/0", "0",
                                "0", "0", "hot,exact", "ok"]
    assert lines[1].split() == ["optim._sgd_kernel", "f32", "sm_90a", "26", "8/4", "0", "0",
                                "3", "hot,exact", "FAIL"]
    assert lines[2].split() == ["augment._mix_kernel", "f32", "sm_90a", "-", "-", "-", "-", "-",
                                "-", "FAIL"]


# --- the command line -----------------------------------------------------------------------------

def test_cli_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        check.main(["--arch", "75"])
    assert exc.value.code == check.EXIT_USAGE
    assert "unknown 75" in capsys.readouterr().err


def test_cli_unknown_kernel(capsys):
    assert check.main(["--kernels", "_no_such_kernel"]) == check.EXIT_USAGE
    err = capsys.readouterr().err
    assert "no kernel matches _no_such_kernel" in err and "dropout._dropout_kernel" in err


def test_cli_when_tools_are_missing(monkeypatch, capsys):
    def missing(ptxas=None):
        raise check.ToolsMissing("ptxas not found")
    monkeypatch.setattr(check, "find_tools", missing)
    assert check.main([]) == check.EXIT_MISSING
    assert "tools missing: ptxas not found" in capsys.readouterr().err
    assert check.main(["--skip-if-missing"]) == check.EXIT_OK
    assert "SKIPPED, tools missing: ptxas not found" in capsys.readouterr().out


def test_missing_ptxas_is_reported():
    _tools_or_skip()
    with pytest.raises(check.ToolsMissing, match="ptxas not found at /nonexistent/ptxas"):
        check.find_tools(ptxas="/nonexistent/ptxas")


# --- compiling (needs the cuda-build extra) -------------------------------------------------------

def test_compile_a_few_kernels(signatures, tmp_path, capsys, monkeypatch):
    _tools_or_skip()
    out = tmp_path / "rows.json"
    ptx_dir = tmp_path / "ptx"
    monkeypatch.setattr(check, "record_signatures", lambda: signatures)   # recorded once
    code = check.main(["--arch", "80", "--kernels", "_dropout_kernel", "optim._sgd_kernel",
                       "--json", str(out), "--keep-ptx", str(ptx_dir)])
    text = capsys.readouterr().out
    assert code == check.EXIT_OK, text
    rows = json.loads(out.read_text())["rows"]
    assert {(r["kernel"], r["dtype"]) for r in rows} == {
        ("dropout._dropout_kernel", "f32"), ("dropout._dropout_kernel", "f64"),
        ("optim._sgd_kernel", "f32"), ("optim._sgd_kernel", "f64")}
    for r in rows:
        assert r["arch"] == "sm_80" and r["error"] is None and r["problems"] == []
        assert 8 <= r["regs"] <= 255 and r["spill_st"] == r["spill_ld"] == 0
        assert r["fma"] == r["contractible"] == 0    # exact kernels: mul.rn only
        assert f"{r['kernel']:<36}  {r['dtype']:<11}  sm_80" in text
    assert len(list(ptx_dir.glob("*.ptx"))) == 4
    assert "0 problem(s)" in text


def _compile(kernel, argtypes, cc=(8, 0, "")):
    lib, cres = check.lower(kernel, argtypes, cc)
    return check.ptx_for(lib, cc), cres


def test_the_checks_catch_real_violations():
    """Kernels written the wrong way fail each promise, and their right versions pass."""
    _tools_or_skip()
    from numba import cuda
    from numba.core import types

    from fastreg.cuda.penalty import mul_rn_device
    from fastreg.cuda.philox import MASK32, U32, stream_block_device

    @cuda.jit
    def contracted(a, b, out):
        i = cuda.grid(1)
        if i < out.size:
            out[i] = a[i] * b[i] + out[i]

    @cuda.jit
    def rounded(a, b, out):
        i = cuda.grid(1)
        if i < out.size:
            out[i] = mul_rn_device(a[i], b[i]) + out[i]

    arr = types.Array(types.float32, 1, "C")
    ptx, _ = _compile(contracted, [arr, arr, arr])
    assert sum(check.fma_findings(ptx)) > 0
    ptx, _ = _compile(rounded, [arr, arr, arr])
    assert check.fma_findings(ptx) == (0, 0)

    @cuda.jit
    def counter_ok(seed_lo, seed_hi, first, out):
        t = cuda.grid(1)
        if t < out.size:
            w0, w1, w2, w3 = stream_block_device(seed_lo, seed_hi, first + np.uint64(t))
            out[t] = w0 ^ w3

    @cuda.jit
    def counter_float(seed_lo, seed_hi, first, out):
        t = cuda.grid(1)
        if t < out.size:
            b = np.float64(first) + t          # a float64 holds 53 bits, not 64
            w0, w1, w2, w3 = stream_block_device(seed_lo, seed_hi, np.uint64(b))
            out[t] = w0 ^ w3

    @cuda.jit
    def counter_narrow(seed_lo, seed_hi, first, out):
        t = cuda.grid(1)
        if t < out.size:
            b = (first + np.uint64(t)) & MASK32   # the high word is lost
            w0, w1, w2, w3 = stream_block_device(seed_lo, seed_hi, b)
            out[t] = w0 ^ w3 ^ (b >> U32)

    u64 = types.uint64
    sig = [u64, u64, u64, types.Array(types.uint64, 1, "C")]
    for kernel, expect in ((counter_ok, None), (counter_float, "floating-point"),
                           (counter_narrow, "high 32-bit word")):
        ptx, cres = _compile(kernel, sig)
        problems = check.counter_findings(ptx, check.param_index(sig, 2, cres.target_context))
        if expect is None:
            assert problems == []
        else:
            assert any(expect in p for p in problems), (kernel, problems)


def test_a_hot_kernel_that_spills_fails(signatures, monkeypatch):
    """The spill rule, end to end: a hot kernel whose assembly reports spills fails the check."""
    tools = _tools_or_skip()
    real = check.assemble

    def spilling(ptx, cc, ptxas):
        res, log = real(ptx, cc, ptxas)
        return dict(res, spill_st=16, spill_ld=16), log
    monkeypatch.setattr(check, "assemble", spilling)
    rows = check.check_kernel("dropout._dropout_mask_kernel",
                              check.discover()["dropout._dropout_mask_kernel"],
                              signatures["dropout._dropout_mask_kernel"], [check.ARCHS["80"]],
                              tools)
    assert rows and all(any("spills registers" in p for p in r["problems"]) for r in rows)


def test_fcuda_still_imports_without_check():
    """check is not imported by fastreg.cuda (it is a tool, not part of the backend)."""
    assert "check" not in fcuda.__all__

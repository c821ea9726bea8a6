"""Checkpoints under fault injection: every entry removed or corrupted in turn (in memory and in a
file) leaves the trainer unchanged; damaged files (truncated, garbage, crafted headers, unknown
members) raise ValueError before their data is read; leftovers of killed saves are removed."""
import io
import os
import subprocess
import sys
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from fastreg import optim
from fastreg.train import Callback, EarlyStopping, Trainer, mlp
from fastreg.train import checkpoint as ckpt
from fastreg.train.data import load_digits


def _digits(n, seed=0):
    images, labels = load_digits()
    X = (images.reshape(len(images), -1) / 16.0).astype(np.float32)
    idx = np.random.default_rng(seed).permutation(len(X))[:n]
    return X[idx], labels[idx]


def _trainer(**kw):
    model = mlp((64, 12, 10), dropout=0.2, batch_norm=True, seed=0)
    opt = optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05, backend="numpy")
    return Trainer(model, opt, callbacks=[EarlyStopping(patience=50)], seed=3,
                   backend="numpy", verbose=0, **kw)


def _snapshot(t):
    """Everything a partial restore could change."""
    return {"params": [p.copy() for p in t.model.parameters()],
            "buffers": [b.copy() for _, b in t.model.named_buffers()],
            "optim": {k: np.array(v, copy=True) for k, v in t.optimizer.state_dict().items()},
            "rng": dict(t.model.rng_state()),
            "counters": (t.epoch, t.seed, t.stop_training),
            "history": {k: list(v) for k, v in t.history.items()},
            "callbacks": [{k: np.array(v, copy=True) for k, v in cb.state_dict().items()}
                          for cb in t.callbacks]}


def _assert_same(a, b):
    assert a["counters"] == b["counters"] and a["rng"] == b["rng"]
    assert a["history"].keys() == b["history"].keys()
    for k in a["history"]:
        np.testing.assert_array_equal(a["history"][k], b["history"][k])
    for x, y in zip(a["params"] + a["buffers"], b["params"] + b["buffers"]):
        np.testing.assert_array_equal(x, y)
    for da, db in [(a["optim"], b["optim"])] + list(zip(a["callbacks"], b["callbacks"])):
        assert da.keys() == db.keys()
        for k in da:
            np.testing.assert_array_equal(da[k], db[k])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint after 2 epochs, and a trainer that went on for a third (so a partial
    restore would show)."""
    X, y = _digits(96)
    Xv, yv = _digits(48, seed=1)
    path = tmp_path_factory.mktemp("ckpt") / "run.npz"
    t = _trainer()
    t.fit(X, y, validation=(Xv, yv), epochs=2, batch_size=32, checkpoint=path)
    state = t.state_dict()
    t.fit(X, y, validation=(Xv, yv), epochs=3, batch_size=32)
    return t, state, path


def _write(path, state):
    np.savez(path, format=np.array(ckpt.FORMAT), **state)


def _variants(key, value):
    """(label, corrupted value or None for removal) for one entry."""
    v = np.asarray(value)
    out = [("removed", None), ("shape", np.stack([v, v]))]
    if v.dtype.kind == "f":
        out.append(("dtype", v.astype(np.int64)))
    elif v.dtype.kind in "iub":
        out.append(("dtype", v.astype(np.float64)))
    else:                                           # text
        out.append(("dtype", np.zeros(v.shape)))
    if v.dtype.kind in "iu" and v.ndim == 0:
        out.append(("range", np.array(-2, np.int64)))
    return out


def test_every_entry_removed_or_corrupted_leaves_the_trainer_unchanged(trained, tmp_path):
    t, state, _ = trained
    before = _snapshot(t)
    assert len(state) > 40
    cases = 0
    for key in sorted(state):
        if key == "trainer/stop_training":          # a bool: no corrupt value of its kind
            variants = [("removed", None), ("shape", np.array([True, False])),
                        ("dtype", np.array(1.0))]
        else:
            variants = _variants(key, state[key])
        for label, value in variants:
            bad = dict(state)
            if value is None:
                del bad[key]
            else:
                bad[key] = value
            with pytest.raises(ValueError) as info:
                t.load_state_dict(bad)
            assert key in str(info.value), (key, label, str(info.value))
            _assert_same(before, _snapshot(t))
            path = tmp_path / "bad.npz"
            _write(path, bad)
            with pytest.raises(ValueError) as info:
                t.load_checkpoint(path)
            assert key in str(info.value), (key, label, str(info.value))
            _assert_same(before, _snapshot(t))
            cases += 1
    assert cases > 120
    t.load_state_dict(state)                      # the intact state still loads
    assert t.epoch == 2


def test_unexpected_entries_and_inconsistencies_are_refused(trained):
    t, state, _ = trained
    before = _snapshot(t)
    bad_states = {
        "trainer/seed": {**state, "trainer/seed": np.array(-1, np.int64)},
        "rng/2.offset": {**state, "rng/2.offset": np.array(-5)},
        "optim/extra": {**state, "optim/extra": np.ones(3)},
        "callback/1/class": {**state, "callback/1/class": np.array("EarlyStopping")},
        "history/val_loss": {**state, "history/val_loss": np.ones(1)},
        "history/loss": {**state, **{f"history/{k}": np.ones(5) for k in
                                     ("loss", "accuracy", "val_loss", "val_accuracy", "time")}},
        "trainer/optimizer": {**state, "trainer/optimizer": np.array("SGD")},
        "callback/0/class": {**state, "callback/0/class": np.array("Callback")},
        "best_weights": {k: v for k, v in state.items()
                         if k != "callback/0/best_weights/buffer/1.running_var"},
        "callback/0/best": {**state, "callback/0/best": np.array(np.nan)},
    }
    for name, bad in bad_states.items():
        with pytest.raises(ValueError) as info:
            t.load_state_dict(bad)
        assert name in str(info.value), (name, str(info.value))
        _assert_same(before, _snapshot(t))


def test_seed_minus_one_is_refused_and_the_largest_seed_loads(trained):
    t, state, _ = trained
    with pytest.raises(ValueError, match=r"'trainer/seed' = -1 is outside \[0, 2\*\*64\)|"
                                         r"'trainer/seed' = -1 is outside \[0, "):
        t.load_state_dict({**state, "trainer/seed": np.array(-1)})
    fresh = _trainer()
    fresh.load_state_dict({**state, "trainer/seed": np.array(2**64 - 1, np.uint64)})
    assert fresh.seed == 2**64 - 1
    assert int(fresh.state_dict()["trainer/seed"]) == 2**64 - 1   # and saves again


def test_optimizer_state_must_be_whole(trained):
    t, state, _ = trained
    before = _snapshot(t)
    no_moments = {k: v for k, v in state.items() if not k.startswith("optim/exp_avg")}
    with pytest.raises(ValueError, match="no entry 'optim/exp_avg.0'"):
        t.load_state_dict(no_moments)
    with pytest.raises(ValueError, match="unexpected checkpoint entry 'optim/exp_avg.0'.*no step"):
        t.load_state_dict({**state, "optim/step": np.array(0, np.int64)})
    with pytest.raises(ValueError, match="max_exp_avg_sq"):
        t.load_state_dict({**state, "optim/max_exp_avg_sq.0": state["optim/exp_avg_sq.0"]})
    _assert_same(before, _snapshot(t))


def _rezip(src, dst, replace=None, extra=None, compression=zipfile.ZIP_STORED):
    """Copy the members of src into dst, with some members' bytes replaced or added."""
    replace, extra = replace or {}, extra or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, replace.get(info.filename, zin.read(info.filename)))
        for name, data in extra.items():
            zout.writestr(name, data)


def _npy_header(shape, descr):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


@pytest.mark.parametrize("member, shape, descr", [
    ("history/loss.npy", (2**40,), "<f8"),                 # 8 TiB, a free-length entry
    ("param/0.weight.npy", (2**21, 2**20), "<f4"),         # 8 TiB, a fixed-shape entry
    ("callback/0/stop_reason.npy", (), "<U2000000000"),    # an 8 GB string
])
def test_a_header_claiming_8_tib_is_refused_before_reading(trained, tmp_path, member, shape,
                                                          descr):
    t, _, path = trained
    before = _snapshot(t)
    bad = tmp_path / "huge.npz"
    _rezip(path, bad, replace={member: _npy_header(shape, descr) + b"\0" * 64})
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=member[:-4].replace("/", ".")):
            t.load_checkpoint(bad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20
    _assert_same(before, _snapshot(t))


def test_member_size_must_match_its_header(trained, tmp_path):
    t, state, path = trained
    before = _snapshot(t)
    with zipfile.ZipFile(path) as z:
        good = z.read("history/loss.npy")
    for data, what in ((good[:-3], "holds"), (good + b"\0" * 8, "holds")):
        bad = tmp_path / "size.npz"
        _rezip(path, bad, replace={"history/loss.npy": data})
        with pytest.raises(ValueError, match=f"'history/loss'.*{what}"):
            t.load_checkpoint(bad)
    _assert_same(before, _snapshot(t))


def test_an_unknown_large_member_is_refused_before_its_data_is_read(trained, tmp_path):
    t, _, path = trained
    before = _snapshot(t)
    bad = tmp_path / "bomb.npz"
    size = 256 * 2**20
    _rezip(path, bad)
    with zipfile.ZipFile(bad, "a", zipfile.ZIP_DEFLATED) as z:
        with z.open("junk.npy", "w", force_zip64=True) as f:
            f.write(_npy_header((size,), "|u1"))
            chunk = bytes(2**22)
            for _ in range(size // len(chunk)):
                f.write(chunk)
    assert os.path.getsize(bad) < 2 * 2**20         # a small file ...
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="unexpected checkpoint entry 'junk'"):
            t.load_checkpoint(bad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20                         # ... whose big member is never read
    _assert_same(before, _snapshot(t))


def test_truncated_garbage_and_bad_zip_files(trained, tmp_path):
    t, _, path = trained
    before = _snapshot(t)
    data = path.read_bytes()
    bad = tmp_path / "bad.npz"
    rng = np.random.default_rng(0)
    cases = [data[:n] for n in (0, 1, 10, 100, len(data) // 3, len(data) // 2, len(data) - 22,
                                len(data) - 1)]
    cases.append(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())      # garbage
    cases.append(b"PK\x03\x04" + bytes(200))                                # a fake zip
    flipped = bytearray(data)                 # a damaged data byte: the CRC check fails
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("param/0.weight.npy")
    flipped[info.header_offset + 30 + len(info.filename) + 200] ^= 0xFF
    cases.append(bytes(flipped))
    for i, payload in enumerate(cases):
        bad.write_bytes(payload)
        with pytest.raises(ValueError) as exc:
            t.load_checkpoint(bad)
        msg = str(exc.value)
        assert "checkpoint" in msg, (i, msg)
        _assert_same(before, _snapshot(t))
    # not an npz at all, a text member, a pickled object array
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("format.npy", b"hello")
    with pytest.raises(ValueError, match="malformed .npy header") as exc:
        t.load_checkpoint(bad)
    assert exc.value.__cause__ is not None
    np.savez(bad, format=np.array(ckpt.FORMAT), **{"history/loss": np.array([None, 1])})
    with pytest.raises(ValueError, match="'history/loss' has dtype object"):
        t.load_checkpoint(bad)
    _assert_same(before, _snapshot(t))


def test_damage_found_by_zipfile_is_chained(trained, tmp_path):
    t, _, path = trained
    bad = tmp_path / "trunc.npz"
    bad.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="not a readable .npz checkpoint") as exc:
        t.load_checkpoint(bad)
    assert isinstance(exc.value.__cause__, zipfile.BadZipFile)
    with pytest.raises(FileNotFoundError):
        t.load_checkpoint(tmp_path / "missing.npz")


def test_fit_resume_checks_the_file_before_touching_anything(trained, tmp_path):
    t, state, _ = trained
    bad = tmp_path / "resume.npz"
    _write(bad, {k: v for k, v in state.items() if k != "callback/0/wait"})
    es = t.callbacks[0]
    before = _snapshot(t)
    es_best = es.best
    X, y = _digits(64)
    with pytest.raises(ValueError, match="callback/0/wait"):
        t.fit(X, y, epochs=5, batch_size=32, checkpoint=bad, resume=True)
    _assert_same(before, _snapshot(t))
    assert es.best == es_best                  # on_train_begin did not reset it either


# --- leftovers of killed saves -----------------------------------------------------------------

def _tmp_name(pid, host, tag="abc123"):
    return f"{ckpt.TMP_PREFIX}{pid}@{host}@{tag}{ckpt.TMP_SUFFIX}"


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_leftover_temporaries_are_removed_safely(tmp_path):
    host = ckpt._host()
    dead = tmp_path / _tmp_name(_dead_pid(), host)
    live = tmp_path / _tmp_name(os.getpid(), host)            # a save in progress here
    other_host_fresh = tmp_path / _tmp_name(12345, "elsewhere")
    other_host_old = tmp_path / _tmp_name(12346, "elsewhere", "x")
    legacy_old = tmp_path / f"{ckpt.TMP_PREFIX}k2j3h4{ckpt.TMP_SUFFIX}"
    legacy_fresh = tmp_path / f"{ckpt.TMP_PREFIX}q9w8e7{ckpt.TMP_SUFFIX}"
    unrelated = tmp_path / "notes.npz.tmp"
    for f in (dead, live, other_host_fresh, other_host_old, legacy_old, legacy_fresh, unrelated):
        f.write_bytes(b"partial")
    old = time.time() - ckpt.STALE_AFTER_S - 60
    for f in (other_host_old, legacy_old, unrelated):
        os.utime(f, (old, old))
    link = tmp_path / _tmp_name(_dead_pid(), host, "lnk")
    link.symlink_to(unrelated)                                  # never followed or removed
    ckpt.save(tmp_path / "c.npz", {"a": np.ones(2)})
    left = set(os.listdir(tmp_path))
    assert left == {"c.npz", live.name, other_host_fresh.name, legacy_fresh.name,
                    unrelated.name, link.name}


def test_a_killed_save_leaves_a_temporary_that_the_next_save_removes(tmp_path):
    # the child writes a complete temporary file and is killed (SIGKILL) just before the rename
    code = (
        "import os, signal, numpy as np\n"
        "from fastreg.train import checkpoint as ckpt\n"
        "def killed(*a):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "ckpt.os.replace = killed\n"
        f"ckpt.save({str(tmp_path / 'c.npz')!r}, {{'a': np.ones(1000)}})\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       timeout=120)
    assert r.returncode == -9, r.stderr
    leftovers = [f for f in os.listdir(tmp_path) if f.endswith(ckpt.TMP_SUFFIX)]
    assert len(leftovers) == 1 and not (tmp_path / "c.npz").exists()
    ckpt.save(tmp_path / "c.npz", {"a": np.zeros(3)})
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]


def test_save_fsyncs_the_folder_after_the_rename(tmp_path, monkeypatch):
    import stat
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", stat.S_ISDIR(os.fstat(fd).st_mode)))
        return real_fsync(fd)

    def replace(a, b):
        calls.append(("replace", None))
        return real_replace(a, b)
    monkeypatch.setattr(ckpt.os, "fsync", fsync)
    monkeypatch.setattr(ckpt.os, "replace", replace)
    ckpt.save(tmp_path / "c.npz", {"a": np.ones(2)})
    assert calls == [("fsync", False), ("replace", None), ("fsync", True)]


class Counter(Callback):
    """A third-party callback with state and no state_spec: its load_state_dict changes the
    callback before it refuses a negative count."""

    def __init__(self):
        self.count = 0

    def on_epoch_end(self, trainer, epoch, logs):
        self.count += 1

    def state_dict(self):
        return {"count": np.array(self.count, np.int64)}

    def load_state_dict(self, state):
        self.count = int(state["count"])
        if self.count < 0:
            raise ValueError("negative count")


def test_a_callback_that_refuses_its_state_is_rolled_back(tmp_path):
    model = mlp((64, 12, 10), dropout=0.2, batch_norm=True, seed=0)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, backend="numpy")
    t = Trainer(model, opt, callbacks=[EarlyStopping(patience=50), Counter()], seed=1,
                backend="numpy", verbose=0)
    X, y = _digits(64)
    t.fit(X, y, validation=(X, y), epochs=1, batch_size=32)
    state = t.state_dict()
    t.fit(X, y, validation=(X, y), epochs=2, batch_size=32)
    before = _snapshot(t)
    with pytest.raises(ValueError, match=r"callback 1 \(Counter\) refused.*negative count"):
        t.load_state_dict({**state, "callback/1/count": np.array(-1)})
    _assert_same(before, _snapshot(t))        # EarlyStopping (loaded first) put back too
    assert t.callbacks[1].count == 2
    # its entries are free-form (no state_spec) but bounded: a huge header is refused unread
    path = tmp_path / "c.npz"
    t.save_checkpoint(path)
    bad = tmp_path / "huge.npz"
    _rezip(path, bad, replace={"callback/1/count.npy": _npy_header((2**40,), "<f8")})
    with pytest.raises(ValueError, match="'callback/1/count' has shape"):
        t.load_checkpoint(bad)
    _assert_same(before, _snapshot(t))
    t.load_state_dict({**state, "callback/1/count": np.array(7)})
    assert t.callbacks[1].count == 7 and t.epoch == 1


def test_load_checkpoint_then_fit_resumes_the_callbacks(tmp_path):
    """fit() calls every callback's on_train_begin, which resets ReduceLROnPlateau and
    EarlyStopping: a state loaded before fit (load_checkpoint) lost their counters there, and
    the run diverged from the uninterrupted one. It now resumes as fit(resume=True) does."""
    from fastreg.train.callbacks import ReduceLROnPlateau
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(64, 5)).astype(np.float32), rng.integers(0, 3, 64)
    val = (rng.normal(size=(32, 5)).astype(np.float32), rng.integers(0, 3, 32))

    def make():
        m = mlp((5, 16, 3), seed=0)
        return Trainer(m, optim.Adam(m.parameters(), lr=0.05), verbose=0,
                       callbacks=[ReduceLROnPlateau("val_loss", patience=2, factor=0.5),
                                  EarlyStopping("val_loss", patience=50,
                                                restore_best_weights=False)])

    whole = make()
    expected = whole.fit(X, y, validation=val, epochs=12, batch_size=16)
    first = make()
    first.fit(X, y, validation=val, epochs=6, batch_size=16)
    first.save_checkpoint(tmp_path / "half.npz")
    assert first.callbacks[0].num_bad_epochs > 0       # a state worth keeping
    again = make()
    again.load_checkpoint(tmp_path / "half.npz")
    got = again.fit(X, y, validation=val, epochs=12, batch_size=16)
    assert got["val_loss"] == expected["val_loss"]
    assert again.optimizer.lr == whole.optimizer.lr
    assert again.callbacks[1].best == whole.callbacks[1].best
    # a second fit of the same trainer starts its callbacks afresh, as before
    third = again.fit(X, y, validation=val, epochs=13, batch_size=16)
    assert len(third["val_loss"]) == 13 and again.callbacks[0].num_bad_epochs <= 1

"""Orbax checkpoints of a run: exact round trip, retention (latest N + best), snapshots, load_params, and their
SHA-256 manifests (verified on load; damaged steps set aside on resume)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfcn.errors import UserError
from jaxfcn.train import checkpoint, integrity
from jaxfcn.train.step import TrainState, make_optimizer, seed_key


def toy_state(step: int, value: float = 0.0) -> TrainState:
    """A TrainState with a real partitioned-optimiser state (no model: no compilation needed)."""
    params = {"encoder": {"k": jnp.full((2, 3), value)}, "decoder": {"k": jnp.full((3,), value)},
              "head": {"k": jnp.full((1,), value), "b": jnp.asarray([-0.0])}}
    tx = make_optimizer(optax_config(), ("encoder",))
    return TrainState(params=params, opt_state=tx.init(params), batch_stats={}, step=jnp.asarray(step, jnp.int32),
                      rng=seed_key(3))


def optax_config():
    from jaxfcn.config import base_config

    return base_config().train


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) and np.asarray(x).dtype == np.asarray(y).dtype
                                      for x, y in zip(la, lb))


def test_state_round_trip_is_exact(tmp_path):
    state = toy_state(5, value=np.float32(1 / 3))
    state = state.replace(opt_state=jax.tree.map(lambda x: x + 0.125 if x.dtype == jnp.float32 else x, state.opt_state))
    manager = checkpoint.state_manager(str(tmp_path))
    checkpoint.save_state(manager, state, val_dice=0.5)
    restored = checkpoint.restore_state(manager, toy_state(0))
    manager.close()
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    assert leaves_equal(restored, state)
    assert np.signbit(restored.params["head"]["b"][0])  # -0.0 survives: bitwise, not just equal


def test_retention_keeps_latest_and_best(tmp_path):
    manager = checkpoint.state_manager(str(tmp_path), keep=2)
    for step, dice in [(1, 0.2), (2, 0.9), (3, None), (4, 0.4), (5, 0.3), (6, None)]:
        checkpoint.save_state(manager, toy_state(step), val_dice=dice)
    checkpoint.save_state(manager, toy_state(6))  # an existing step is left alone
    manager.close()
    assert checkpoint.checkpoint_steps(str(tmp_path)) == [2, 5, 6]
    assert checkpoint.best_checkpoint_step(str(tmp_path)) == 2


def test_load_params_prefers_snapshots_and_ignores_partial_saves(tmp_path):
    workdir = str(tmp_path)
    states = checkpoint.state_manager(workdir)
    snaps = checkpoint.snapshot_manager(workdir)
    for step in (0, 10):
        checkpoint.save_snapshot(snaps, step, {"params": toy_state(step, value=step).params})
    checkpoint.save_state(states, toy_state(12, value=12.0), val_dice=0.7)
    states.close()
    snaps.close()
    # a save cut short by kill -9 leaves only orbax's temporary directory: it is not a step
    os.makedirs(os.path.join(workdir, "checkpoints", "20.orbax-checkpoint-tmp-1234"))
    assert checkpoint.snapshot_steps(workdir) == [0, 10]
    assert checkpoint.checkpoint_steps(workdir) == [12]
    assert float(checkpoint.load_params(workdir, 10)["decoder"]["k"][0]) == 10.0
    assert float(checkpoint.load_params(workdir)["decoder"]["k"][0]) == 12.0  # latest anywhere
    assert float(checkpoint.load_params(workdir, "best")["decoder"]["k"][0]) == 12.0
    assert list(checkpoint.load_params(workdir, 0)) == ["encoder", "decoder", "head"]
    with pytest.raises(UserError, match="no parameters saved at step 5"):
        checkpoint.load_params(workdir, 5)


def test_empty_workdir_has_no_params(tmp_path):
    assert checkpoint.snapshot_steps(str(tmp_path)) == []
    with pytest.raises(UserError, match="no saved parameters"):
        checkpoint.load_params(str(tmp_path))


# --- integrity: SHA-256 manifests (jaxfcn.train.integrity) -----------------------------------------

def flip_middle_bits(path, bits: int = 64) -> None:
    """Invert ``bits`` bits in the middle of a file, as a failing disk or a bad copy would."""
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2
    for i in range(bits // 8):
        data[middle + i] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(data))


def largest_data_file(step_dir) -> str:
    """The largest array data file of an orbax step (``.../ocdbt.process_0/d/<hash>``)."""
    files = [os.path.join(root, name) for root, _, names in os.walk(step_dir) for name in names
             if os.path.basename(root) == "d"]
    return max(files, key=os.path.getsize)


def saved_run(workdir, ckpt_steps=(2, 4), snap_steps=(0, 4)):
    states = checkpoint.state_manager(workdir, keep=len(ckpt_steps))
    snaps = checkpoint.snapshot_manager(workdir)
    for step in snap_steps:
        checkpoint.save_snapshot(snaps, step, {"params": toy_state(step, value=step).params})
    for step in ckpt_steps:
        checkpoint.save_state(states, toy_state(step, value=step), val_dice=0.1 * step)
    states.close()
    snaps.close()
    return workdir


def test_every_saved_step_has_a_manifest_that_verifies(tmp_path):
    workdir = saved_run(str(tmp_path))
    for kind, steps in ((checkpoint.CHECKPOINT_DIR, (2, 4)), (checkpoint.SNAPSHOT_DIR, (0, 4))):
        for step in steps:
            manifest = json.load(open(os.path.join(workdir, kind, str(step), integrity.MANIFEST_FILE)))
            assert any("/d/" in name for name in manifest["files"]) and "_CHECKPOINT_METADATA" in manifest["files"]
            assert checkpoint.verify_step(workdir, kind, step) is True


DAMAGE = {
    "flipped_bits": (lambda step_dir: flip_middle_bits(largest_data_file(step_dir)), "does not match its SHA-256"),
    "missing_file": (lambda step_dir: os.unlink(os.path.join(step_dir, "default", "_METADATA")), "_METADATA is missing"),
    "truncated": (lambda step_dir: os.truncate(largest_data_file(step_dir), 7), "has 7 bytes"),
    "bad_manifest": (lambda step_dir: flip_middle_bits(os.path.join(step_dir, integrity.MANIFEST_FILE), 16),
                     "checksum manifest"),
}


def manifest_variants(text: bytes):
    """(what, damaged copy) for every single-byte inversion and every single-bit flip of a manifest, plus
    edits that keep it valid, well-formed JSON: another hex digit in a hash, another byte count, a renamed
    file. Inverting two ASCII bytes can make one valid UTF-8 character (e.g. "4a" -> U+02DE), so a
    manifest damaged in the middle may or may not still parse, depending on what the step's files are
    called; this covers every position instead of one."""
    for i in range(len(text)):
        for mask in (0xFF, *(1 << bit for bit in range(8))):
            damaged = bytearray(text)
            damaged[i] ^= mask
            yield f"byte {i} ^ {mask:#04x}", bytes(damaged)
    manifest = json.loads(text)
    name, entry = sorted(manifest["files"].items())[0]
    digit = entry["sha256"][0]
    for what, edit in (("hash digit", lambda e: e.update(sha256=("1" if digit == "0" else "0") + e["sha256"][1:])),
                       ("byte count", lambda e: e.update(bytes=e["bytes"] + 1)),
                       ("file name", None)):
        copy = json.loads(text)
        if edit is None:
            copy["files"]["x" + name] = copy["files"].pop(name)
        else:
            edit(copy["files"][name])
        yield what, json.dumps(copy, indent=2, sort_keys=True).encode()


def test_every_damage_of_a_manifest_is_refused_naming_the_manifest(tmp_path):
    """A damaged manifest is never accepted, and never blames an intact data file instead of itself."""
    workdir = saved_run(str(tmp_path), ckpt_steps=(2,), snap_steps=(0,))
    step_dir = os.path.join(workdir, "snapshots", "0")
    path = os.path.join(step_dir, integrity.MANIFEST_FILE)
    text = open(path, "rb").read()
    assert json.loads(text)[integrity.SELF_CHECKSUM] == integrity.content_sha256(json.loads(text))
    accepted = []
    fd = os.open(path, os.O_WRONLY)  # rewritten in place: reopening with O_TRUNC flushes on ext4, 1 ms each
    try:
        for what, damaged in manifest_variants(text):
            os.ftruncate(fd, len(damaged))
            os.pwrite(fd, damaged, 0)
            try:
                integrity.verify(step_dir, "snapshot step 0")
                accepted.append(what)
            except integrity.DamagedStep as error:
                if error.path != path or "checksum manifest" not in str(error) or "\n" in str(error):
                    accepted.append(f"{what}: {error}")
        os.ftruncate(fd, len(text))
        os.pwrite(fd, text, 0)
    finally:
        os.close(fd)
    assert not accepted, accepted[:5]
    assert integrity.verify(step_dir, "snapshot step 0") is True


def test_manifest_without_self_checksum_is_still_read(tmp_path):
    """Format 1 (manifests written before the self-check) verifies its files; its form is still checked."""
    workdir = saved_run(str(tmp_path), ckpt_steps=(2,), snap_steps=(0,))
    step_dir = os.path.join(workdir, "snapshots", "0")
    path = os.path.join(step_dir, integrity.MANIFEST_FILE)
    manifest = json.load(open(path))
    del manifest[integrity.SELF_CHECKSUM]
    manifest["format"] = 1
    json.dump(manifest, open(path, "w"), indent=2, sort_keys=True)
    assert integrity.verify(step_dir, "snapshot step 0") is True
    flip_middle_bits(largest_data_file(step_dir))
    with pytest.raises(integrity.DamagedStep, match="does not match its SHA-256"):
        integrity.verify(step_dir, "snapshot step 0")
    manifest["files"][sorted(manifest["files"])[0]]["sha256"] = "not hex"
    json.dump(manifest, open(path, "w"))
    with pytest.raises(integrity.DamagedStep, match="checksum manifest .* cannot be trusted .*malformed"):
        integrity.verify(step_dir, "snapshot step 0")


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_step_is_one_line_naming_step_and_file(tmp_path, damage):
    workdir = saved_run(str(tmp_path))
    apply, expected = DAMAGE[damage]
    apply(os.path.join(workdir, "snapshots", "4"))
    with pytest.raises(integrity.DamagedStep) as error:
        checkpoint.load_params(workdir, 4)
    message = str(error.value)
    assert "\n" not in message and f"snapshot step 4 of {workdir}" in message and expected in message, message
    assert error.value.path.startswith(os.path.join(workdir, "snapshots", "4"))
    assert float(checkpoint.load_params(workdir, 2)["decoder"]["k"][0]) == 2.0  # other steps still load


def test_damaged_checkpoint_is_refused_on_restore_and_best(tmp_path):
    workdir = saved_run(str(tmp_path))
    flip_middle_bits(largest_data_file(os.path.join(workdir, "checkpoints", "2")))
    manager = checkpoint.state_manager(workdir, read_only=True)
    with pytest.raises(integrity.DamagedStep, match="checkpoint step 2 of .* does not match"):
        checkpoint.restore_state(manager, toy_state(0), 2)
    manager.close()
    with pytest.raises(integrity.DamagedStep, match="checkpoint step 2"):  # its metrics decide the best step
        checkpoint.best_checkpoint_step(workdir)


def test_step_without_manifest_loads_unverified_with_one_note(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(integrity, "_noted_unverified", False)
    workdir = saved_run(str(tmp_path))
    for step in (0, 4):
        os.unlink(os.path.join(workdir, "snapshots", str(step), integrity.MANIFEST_FILE))
    assert checkpoint.verify_step(workdir, checkpoint.SNAPSHOT_DIR, 4) is False
    assert float(checkpoint.load_params(workdir, 4)["decoder"]["k"][0]) == 4.0
    checkpoint.load_params(workdir, 0)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no checksum manifest" in err[0], err
    # orbax's own failure on such a step is one line too, naming the file it could not decode
    flip_middle_bits(os.path.join(workdir, "snapshots", "4", "default", "_METADATA"))
    with pytest.raises(UserError, match=r"snapshot step 4 of .* could not be read: .*/default/_METADATA does not decode"):
        checkpoint.load_params(workdir, 4)


def test_set_aside_damaged_resumes_from_newest_that_verifies(tmp_path):
    workdir = saved_run(str(tmp_path), ckpt_steps=(2, 4, 6), snap_steps=(0, 3, 5))
    assert checkpoint.set_aside_damaged(workdir).message is None
    flip_middle_bits(largest_data_file(os.path.join(workdir, "checkpoints", "6")))
    flip_middle_bits(largest_data_file(os.path.join(workdir, "snapshots", "5")))  # above step 4: written again
    flip_middle_bits(largest_data_file(os.path.join(workdir, "snapshots", "3")))  # below: left for loads to report
    recovery = checkpoint.set_aside_damaged(workdir)
    assert recovery.damaged_checkpoints == {6}
    assert "checkpoint step 6" in recovery.message and "also damaged: snapshot step 5" in recovery.message
    assert recovery.message.endswith("resuming from step 4, the newest checkpoint that verifies")
    assert checkpoint.checkpoint_steps(workdir) == [2, 4] and checkpoint.snapshot_steps(workdir) == [0, 3]
    assert sorted(os.listdir(os.path.join(workdir, "damaged", "checkpoints"))) == ["6"]
    assert sorted(os.listdir(os.path.join(workdir, "damaged", "snapshots"))) == ["5"]
    for step in (2, 4):
        flip_middle_bits(largest_data_file(os.path.join(workdir, "checkpoints", str(step))))
    recovery = checkpoint.set_aside_damaged(workdir)
    assert recovery.message.endswith("starting again from step 0: no checkpoint verifies")
    assert checkpoint.checkpoint_steps(workdir) == [] and checkpoint.snapshot_steps(workdir) == [0]  # 0 verifies
    assert sorted(os.listdir(os.path.join(workdir, "damaged", "snapshots"))) == ["3", "5"]

"""Data parallelism over devices and processes: ``--parallel none|pmap|sharding|auto``.

A :class:`DevicePlan` says where a run's train state and batches live and how its step is compiled.
The training loop asks it to place the state, place each batch, compile the step and hand back each
model's state (one per seed of a K-seed program) as ordinary arrays for validation and checkpoints.

- ``none``: one device (the first). The step is ``jax.jit(step, donate_argnums=0)``: exactly
  :func:`jaxfcn.train.step.make_train_step`.
- ``sharding`` (``auto`` with more than one device): ``jax.jit`` with ``NamedSharding`` on a
  ``jax.make_mesh`` mesh with axes ``("seed", "data")`` of shape ``(gcd(K, D), D / gcd(K, D))`` for K stacked
  seeds (K = 1 for a single run) on D devices. The batch is split along ``data``; the stacked seed axis
  of the state along ``seed``; everything else is replicated. XLA partitions the one-device program,
  so the numbers are those of one device up to the order of floating-point sums.
- ``pmap``: ``jax.pmap`` over all devices, the state replicated on each, the batch split in D shards,
  with the collectives of :func:`jaxfcn.train.step.train_step_function` (``axis_name="data"``) so that the
  step equals the one-device step of the whole batch. Kept because users ask for it by name (pmap is in
  maintenance mode since JAX 0.8); one process only.
- ``auto``: ``sharding`` when more than one device is used, else ``none``.

The global batch (``train.batch_size``) must divide evenly over the data-parallel devices; asking for
more devices than exist is an error. Both are one-line :class:`~jaxfcn.errors.UserError` s.

Multi-host (several processes, one per machine, JAX's multi-controller runtime): call
:func:`initialize_distributed` before anything else touches JAX. Every process runs the same program;
``jax.devices()`` then lists the devices of all processes and ``sharding`` spans them. Each process
reads the (deterministic) global batch and contributes the rows of its own devices. Orbax saves are
collective; plain files (metrics, summaries) are written by process 0 only. See ``docs/multihost.md``.

Example::

    plan = plan_devices("auto", batch_size=8)                 # sharding over all local devices
    state = plan.place_state(init_train_state(model, config))
    step = plan.compile_step(train_step_function(model, config, axis_name=plan.axis_name), state)
    state, metrics = step(state, plan.place_batch(batch))
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable

import numpy as np

from jaxfcn.errors import UserError
from jaxfcn.runtime import on_device

PARALLEL_MODES = ("auto", "none", "pmap", "sharding")
MESH_AXES = ("seed", "data")
PMAP_AXIS = "data"

# Multi-host settings from the environment (flags win). JAX_COORDINATOR_ADDRESS is also read by JAX itself.
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, auto: bool = False) -> bool:
    """Start JAX's multi-controller runtime if this process is one of several; returns whether it did.

    Settings come from the arguments, else from ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
    ``JAX_PROCESS_ID``. ``auto=True`` lets JAX detect them (Cloud TPU pod slices, SLURM, Open MPI).
    Nothing happens for a single process. Must run before any other JAX call of the process.
    """
    import jax

    coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    if auto:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
        return True
    if num_processes is None or num_processes <= 1:
        if coordinator or process_id:
            raise UserError("--num-processes: multi-host settings given but the number of processes is "
                            f"{num_processes or 1}; set --num-processes N (> 1) or drop --coordinator/--process-id")
        return False
    if not coordinator:
        raise UserError(f"--coordinator: {num_processes} processes need the coordinator's HOST:PORT "
                        f"(or {ENV_COORDINATOR})")
    if process_id is None or not 0 <= process_id < num_processes:
        raise UserError(f"--process-id: expected an integer in [0, {num_processes}) for {num_processes} "
                        f"processes, got {process_id}")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    return True


def _env_int(name: str) -> int | None:
    text = os.environ.get(name)
    if text in (None, ""):
        return None
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{name}={text}: expected an integer") from None


@dataclasses.dataclass(frozen=True)
class DevicePlan:
    """Where a program's state and batches live. ``num_seeds`` 0: an ordinary (unstacked) state; K ≥ 1:
    a state stacked on a leading seed axis of size K. ``seed_batches``: batches carry a leading seed axis
    too (independent data order)."""

    mode: str  # none | pmap | sharding
    devices: tuple
    num_seeds: int = 0
    seed_batches: bool = False
    mesh: Any = None  # sharding only

    @property
    def axis_name(self) -> str | None:
        """The collective axis the step must be built with: pmap, and sharding of stacked seeds (whose
        step is partitioned by hand, see :meth:`compile_step`)."""
        return PMAP_AXIS if self.mode == "pmap" or (self.mode == "sharding" and self.num_seeds) else None

    @property
    def primary(self) -> bool:
        """Whether this process writes the plain files (process 0 of a multi-host run)."""
        import jax

        return jax.process_index() == 0

    @property
    def multi_process(self) -> bool:
        import jax

        return jax.process_count() > 1

    def describe(self) -> dict:
        out = {"mode": self.mode, "devices": len(self.devices), "processes": _process_count()}
        if self.mesh is not None:
            out["mesh"] = dict(zip(self.mesh.axis_names, map(int, self.mesh.devices.shape)))
        return out

    def barrier(self, name: str) -> None:
        """Wait for every process (no-op for one process)."""
        if self.multi_process:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(name)

    # --- shardings ------------------------------------------------------------------------------------

    def _named(self, *spec):
        import jax

        return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(*spec))

    def _state_sharding(self):
        return self._named("seed") if self.num_seeds else self._named()

    def _batch_sharding(self):
        return self._named("seed", "data") if self.seed_batches else self._named("data")

    # --- placement ------------------------------------------------------------------------------------

    def place_state(self, state):
        """Put a (host or device) state where the compiled step expects it."""
        import jax

        if self.mode == "none":
            return on_device(state, self.devices[0])
        if self.mode == "pmap":
            # One copy per device on a new leading axis; pmap moves the shards at the first call.
            return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (len(self.devices),) + np.shape(x)), state)
        return _global_arrays(state, self._state_sharding())

    def place_batch(self, batch: dict) -> dict:
        """A host batch ``(B, ...)`` (or ``(K, B, ...)`` with ``seed_batches``) placed for the step."""
        if self.mode == "none":
            # copied now (in the loop's prefetch thread): a step whose batch is still being copied would run
            # on XLA:CPU's pool threads, and so would every step queued behind it (jaxfcn.runtime.on_device)
            return on_device(batch, self.devices[0])
        if self.mode == "pmap":
            d = len(self.devices)
            axis = 1 if self.seed_batches else 0

            def shard(x):
                x = np.asarray(x)
                x = x.reshape(x.shape[:axis] + (d, x.shape[axis] // d) + x.shape[axis + 1:])
                return np.moveaxis(x, axis, 0)

            return {k: shard(v) for k, v in batch.items()}
        return _global_arrays(batch, self._batch_sharding())

    def compile_step(self, step_fn: Callable, state) -> Callable:
        """``step_fn`` (pure ``(state, batch) -> (state, metrics)``) compiled for this plan; ``state`` is
        donated. ``state`` (placed) gives the structure for the shardings."""
        import jax

        from jaxfcn.models.layers import compiler_options

        if self.mode == "none":
            return jax.jit(step_fn, donate_argnums=0, compiler_options=compiler_options())
        if self.mode == "pmap":
            return jax.pmap(step_fn, axis_name=PMAP_AXIS, devices=list(self.devices), donate_argnums=0)
        state_sharding = jax.tree.map(lambda _: self._state_sharding(), state)
        if self.num_seeds:
            # Stacked seeds are partitioned by hand: each device steps its seeds on its batch shard, with
            # the step's own collectives over "data". XLA's partitioner mishandles the grouped convolutions
            # of vmapped seeds: wrong results when the seed axis is sharded (seen with 1×1 convolutions,
            # JAX 0.10.2) and an all-gather of the whole batch when only the batch is (openxla/xla#47945).
            spec = jax.sharding.PartitionSpec
            batch_spec = spec("seed", "data") if self.seed_batches else spec("data")
            step_fn = jax.shard_map(step_fn, mesh=self.mesh, in_specs=(spec("seed"), batch_spec),
                                    out_specs=(spec("seed"), spec("seed")), check_vma=False)
        # Metrics come back replicated so that every process can read them.
        return jax.jit(step_fn, in_shardings=(state_sharding, self._batch_sharding()),
                       out_shardings=(state_sharding, self._named()), donate_argnums=0,
                       compiler_options=compiler_options())

    # --- per-model views ------------------------------------------------------------------------------

    def members(self, tree) -> list:
        """The state (or any step output) of each model: ``[tree]`` for an unstacked plan, else K trees,
        as arrays on the first device (several processes: numpy copies in every process), ready for
        validation and orbax."""
        import jax

        if self.mode == "none" and not self.num_seeds:
            return [tree]
        if self.mode == "sharding" and not self.num_seeds:
            members = [tree]  # already replicated
        else:
            members = _unstack_fn(self)(tree)
        if self.multi_process:
            # Host copies: validation then runs in each process on its own, and orbax writes numpy
            # leaves from process 0 without recording the multi-host device mesh, so the checkpoints
            # load on any machine (a global array's checkpoint restores only on the same topology).
            return jax.device_get(members)
        return jax.device_put(members, self.devices[0])  # a replicated array's local copy: no transfer

    def host_members(self, tree) -> list:
        """:meth:`members` of a tree already fetched to the host (numpy), e.g. the step metrics."""
        import jax

        if self.mode == "pmap":
            tree = jax.tree.map(lambda x: np.asarray(x)[0], tree)
        if not self.num_seeds:
            return [tree]
        return [jax.tree.map(lambda x, i=i: np.asarray(x)[i], tree) for i in range(self.num_seeds)]

    def stack(self, members: list):
        """The host-side stacked state of K member states (the inverse of :meth:`members`)."""
        import jax

        if not self.num_seeds:
            (tree,) = members
            return tree
        return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *members)


def _unstack_fn(plan: DevicePlan) -> Callable:
    """One jitted program that slices every member out of a placed tree.

    :func:`_unstack` with the plan's settings as static arguments and equal shardings, so JAX's jit cache
    serves every call for an equal plan. Slicing needs no optimisation: it compiles fast (XLA:CPU otherwise
    spends seconds on a big state tree). Sharding: replicated outputs (global arrays that every process can
    save and evaluate).
    """
    import jax

    from jaxfcn.train.step import fast_compile

    program = jax.jit(_unstack, static_argnums=(1, 2), compiler_options=fast_compile(),
                      out_shardings=plan._named() if plan.mode == "sharding" else None)
    return lambda tree: program(tree, plan.mode == "pmap", plan.num_seeds)


def _unstack(tree, pmap: bool, k: int) -> list:
    import jax

    if pmap:
        tree = jax.tree.map(lambda x: x[0], tree)  # every device holds the same copy
    if not k:
        return [tree]
    return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(k)]


def _global_arrays(tree, sharding):
    """``tree`` as jax Arrays with ``sharding``; every process supplies the rows of its own devices
    (from its copy of the full host value, which all processes compute identically)."""
    import jax

    def put(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x, sharding)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def _process_count() -> int:
    import jax

    return jax.process_count()


def plan_devices(mode: str, batch_size: int, num_seeds: int = 0, num_devices: int | None = None,
                 seed_batches: bool = False) -> DevicePlan:
    """Validate ``--parallel`` / ``--devices`` against the machine and the batch; build the plan.

    ``num_devices``: how many devices to use (default: all, across all processes). ``num_seeds``: 0 for
    a single run, K for a program of K stacked seeds.
    """
    import jax

    if mode not in PARALLEL_MODES:
        raise UserError(f"--parallel {mode}: not one of {list(PARALLEL_MODES)}")
    available = jax.devices()
    if num_devices is not None:
        if num_devices < 1:
            raise UserError(f"--devices {num_devices}: must be at least 1")
        if num_devices > len(available):
            raise UserError(f"--devices {num_devices}: only {len(available)} {available[0].platform} device(s) "
                            "exist" + (f" across {jax.process_count()} processes" if jax.process_count() > 1 else ""))
    count = len(available) if num_devices is None else num_devices
    if mode == "auto":
        mode = "sharding" if count > 1 else "none"
    multi = jax.process_count() > 1
    if multi and count != len(available):
        raise UserError(f"--devices {count}: a multi-host run uses every device of every process ({len(available)})")
    if mode == "none":
        if count > 1 and num_devices is not None:
            raise UserError(f"--parallel none runs on one device; --devices {count} needs --parallel sharding or pmap")
        if multi:
            raise UserError("--parallel none: a multi-host run needs --parallel sharding (or auto)")
        return DevicePlan("none", tuple(available[:1]), num_seeds, seed_batches)
    devices = tuple(available[:count])
    if mode == "pmap":
        if multi:
            raise UserError("--parallel pmap: one process only; use --parallel sharding for multi-host runs")
        if batch_size % count:
            raise UserError(f"train.batch_size={batch_size}: the global batch must be divisible by the {count} "
                            f"devices of --parallel pmap")
        return DevicePlan("pmap", devices, num_seeds, seed_batches)
    seed_shards = math.gcd(max(num_seeds, 1), count)
    data_shards = count // seed_shards
    if batch_size % data_shards:
        raise UserError(f"train.batch_size={batch_size}: the global batch must be divisible by the {data_shards} "
                        f"data-parallel devices of --parallel sharding ({count} devices"
                        + (f", {seed_shards} seed shards for {num_seeds} seeds" if seed_shards > 1 else "") + ")")
    mesh = jax.make_mesh((seed_shards, data_shards), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2,
                         devices=devices)
    return DevicePlan("sharding", devices, num_seeds, seed_batches, mesh)

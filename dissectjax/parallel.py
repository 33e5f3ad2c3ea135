"""Data parallelism over every device of every process, on JAX's own machinery.

A one-axis mesh (``data``) spans all devices (``jax.devices()``, across hosts after
``jax.distributed.initialize``). Each global batch is split along its first axis: every
process loads only its slice of the rows, and every device reduces its shard to integer
statistics that are summed (``psum``) or min/max-ed across the mesh inside the compiled
kernel. Integer reductions are exact and order-independent, so counts are bit-identical
on one device, many devices or many hosts.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dissectjax.errors import DissectError

DATA = "data"


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """The mesh a dissection runs on, and how a global batch maps onto processes."""

    mesh: Mesh

    @classmethod
    def create(cls, devices=None) -> DataParallel:
        devices = list(devices) if devices is not None else jax.devices()
        return cls(Mesh(np.array(devices), (DATA,)))

    @property
    def size(self) -> int:
        return self.mesh.size

    @property
    def process_index(self) -> int:
        return jax.process_index()

    @property
    def process_count(self) -> int:
        return jax.process_count()

    @property
    def is_main(self) -> bool:
        return self.process_index == 0

    @property
    def batch_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, P(DATA))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def global_batch_size(self, per_device: int) -> int:
        """Rows of a global batch: ``per_device`` on every device of every process.

        A fixed per-device batch keeps every device's compiled program the same whatever
        the device count, which keeps floating-point results (model activations)
        bit-identical across meshes.
        """
        return per_device * self.size

    def local_rows(self, rows: np.ndarray) -> np.ndarray:
        """This process's contiguous slice of a global batch's rows."""
        per = len(rows) // self.process_count
        return rows[self.process_index * per : (self.process_index + 1) * per]

    def shard(self, local: np.ndarray) -> jax.Array:
        """This process's rows of a batch -> the global array, split along axis 0."""
        return jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(local))

    def replicate(self, value: np.ndarray) -> jax.Array:
        return jax.device_put(np.asarray(value), self.replicated)

    def across(self, reduction: str) -> Callable[[jax.Array], jax.Array]:
        """The collective that combines a per-device value over the mesh (inside ``shard_map``):
        ``"sum"``, ``"min"`` or ``"max"``; the identity on a one-device mesh, where XLA would
        still copy the value through an all-reduce."""
        if self.size == 1:
            return lambda x: x
        op = {"sum": jax.lax.psum, "min": jax.lax.pmin, "max": jax.lax.pmax}[reduction]
        return lambda x: op(x, DATA)

    def shard_map(self, fn: Callable, in_specs, out_specs) -> Callable:
        """``jax.shard_map`` over the mesh. On one device the outputs :meth:`across` leaves
        alone are replicated trivially, which the replication check cannot see: it is off."""
        return jax.shard_map(fn, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=self.size > 1)

    def reduce(self, fn: Callable, num_batched: int, reductions) -> Callable:
        """Compiles ``fn`` per device over batch shards, reducing its outputs over the mesh.

        The first ``num_batched`` arguments are split along axis 0; the rest (and any
        static keyword arguments) are replicated. ``reductions`` mirrors the output
        pytree with "sum", "min" or "max" at each leaf.
        """

        def build(*args, **static):
            def per_device(*a):
                out = fn(*a, **static)
                return jax.tree.map(lambda r, x: self.across(r)(x), reductions, out)

            specs = tuple(P(DATA) if i < num_batched else P() for i in range(len(args)))
            return self.shard_map(per_device, specs, P())(*args)

        return build


def to_host(x: jax.Array) -> np.ndarray:
    """A replicated (possibly multi-process) array as NumPy, from this process's copy."""
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(x.addressable_shards[0].data)


def initialize_distributed(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    """``jax.distributed.initialize`` from flags, else from the environment.

    With no flags and no ``DISSECTJAX_COORDINATOR`` in the environment, JAX's own cluster
    detection (SLURM, TPU pods, ...) decides. On CPU, collectives use gloo.
    """
    coordinator = coordinator or os.environ.get("DISSECTJAX_COORDINATOR")
    if num_processes is None and "DISSECTJAX_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["DISSECTJAX_NUM_PROCESSES"])
    if process_id is None and "DISSECTJAX_PROCESS_ID" in os.environ:
        process_id = int(os.environ["DISSECTJAX_PROCESS_ID"])
    if coordinator and (num_processes is None or process_id is None):
        raise DissectError(
            "a coordinator address needs the number of processes and this process id (or the DISSECTJAX_* variables)"
        )
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError):  # option renamed or gone: the platform default serves
        pass
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)

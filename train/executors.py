"""Executors: map a function over jobs serially, in local processes, or as Ray tasks.

They only map; the results do not depend on which one runs (every job is seeded on its own).
Rows come back as soon as their job ends, in completion order for processes and Ray.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, TypeVar

from misical_gym.errors import MissingDependencyError

JobT = TypeVar("JobT")
RowT = TypeVar("RowT")

PARENT_POLL_SECONDS = 1.0
"""How often a worker process checks that the process that started it still lives."""


def map_jobs(
    run: Callable[[JobT], RowT],
    jobs: Sequence[JobT],
    *,
    workers: int = 1,
    use_ray: bool = False,
    ray_address: str | None = None,
) -> Iterator[tuple[JobT, RowT]]:
    """Yield ``(job, run(job))`` for every job: serially, in ``workers`` processes, or on Ray.

    Raises:
        ValueError: ``workers`` is below 1, or both ``workers > 1`` and ``use_ray``.
        MissingDependencyError: ``use_ray`` without Ray installed.
    """
    check_executor(workers, use_ray)
    if use_ray:
        yield from _on_ray(run, jobs, ray_address)
    elif workers > 1:
        yield from _in_processes(run, jobs, workers)
    else:
        for job in jobs:
            yield job, run(job)


def check_executor(workers: int, use_ray: bool) -> None:
    """Raise ValueError unless ``workers`` and ``use_ray`` name one executor; callers check
    before any work, :func:`map_jobs` again when it starts.

    Raises:
        ValueError: ``workers`` is below 1, or both ``workers > 1`` and ``use_ray``.
    """
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if use_ray and workers > 1:
        raise ValueError("--workers and --ray are mutually exclusive: Ray schedules the jobs")


def _in_processes(
    run: Callable[[JobT], RowT], jobs: Sequence[JobT], workers: int
) -> Iterator[tuple[JobT, RowT]]:
    """Local worker processes that exit on their own when this process dies (even by SIGKILL,
    which leaves no chance to stop them)."""
    if not jobs:
        return
    with ProcessPoolExecutor(
        workers, initializer=_exit_with_parent, initargs=(os.getpid(),)
    ) as pool:
        futures = {pool.submit(run, job): job for job in jobs}
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:
            for future in futures:  # interrupted or failed: start no further jobs
                future.cancel()


def _exit_with_parent(parent: int) -> None:
    """In a worker: a daemon thread that ends the process once ``parent`` is gone."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)  # the parent cannot take the result any more

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def import_ray() -> Any:
    """Ray, imported only when ``--ray`` is asked for: it is an optional extra."""
    try:
        import ray
    except ImportError as error:
        raise MissingDependencyError(
            'Ray is not installed; --ray needs the optional extra: pip install "misical-gym[ray]"'
        ) from error
    return ray


def _on_ray(
    run: Callable[[JobT], RowT], jobs: Sequence[JobT], address: str | None
) -> Iterator[tuple[JobT, RowT]]:
    """Run every job as a Ray task; yield each row as soon as its task ends.

    Connects with ``ray.init(address=address)``: an existing cluster at ``address``, or a new
    local one when ``address`` is None (unless ``RAY_ADDRESS`` names one). A connection the
    caller already opened with ``ray.init`` is reused and left open; one opened here is shut
    down at the end. Jobs must carry absolute paths, every node must see them at the same path
    and have this package installed.
    """
    if not jobs:
        return
    ray = import_ray()
    connected_here = not ray.is_initialized()
    if connected_here:
        ray.init(address=address)
    pending: list[Any] = []
    try:
        task = ray.remote(num_cpus=1)(run)
        refs = {task.remote(job): job for job in jobs}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                yield refs[ref], ray.get(ref)
    finally:
        for ref in pending:  # interrupted or failed: do not leave jobs running on the cluster
            ray.cancel(ref)
        if connected_here:
            ray.shutdown()

"""Running a command's shards on a Ray cluster (`--executor ray`).

Ray Core actors, not Ray Data: each actor builds the engine once (the checkpoint, the model on its device, the hooks)
and then explains its whole shard through the very `examine` a local run calls — decoding, batching and the cache as
they are — so that nothing of the engine is re-created per batch, and gradients (CAMs need them) are never switched
off by a batch-inference wrapper (Ray Data's examples run under `torch.inference_mode()`). One actor per GPU when the
cluster has GPUs (`num_gpus=1`), else one per `--ray-cpus` CPUs; N = the number of actors, and actor K runs shard K
of N. The actors read the images from the paths the settings name — a path every node can read (a shared file
system) — and return their parts (records and arrays) to the driver, which writes each under `<out>/shards/` as it
arrives and then finishes exactly as a local run does. A shard whose worker dies fails the run, naming the shard:
its siblings' parts are on disk, so it can be re-run alone (`--shard K/N`) and merged.

Not for: what a shard computes (commands/) or how parts are joined (shards.py).
"""

from __future__ import annotations

from pathlib import Path

from btxrd_cam.errors import BtxrdCamError, one_line
from btxrd_cam.shards import Part, Shard, write_part

RAY_HINT = "pip install 'btxrd-cam[ray]'"
PATH_FIELDS = ("ckpt", "data_root", "splits_dir", "out", "against", "metrics", "output")


def worker_settings(settings) -> dict:
    """The settings an actor rebuilds: every path made absolute (an actor's working directory is not the
    driver's), run as a plain local examination."""
    values = settings.model_dump(mode="json")
    for name in PATH_FIELDS:
        if values.get(name):
            values[name] = str(Path(values[name]).resolve())
    split = values.get("split")
    if split and split not in ("stratified", "center"):
        values["split"] = str(Path(split).resolve())
    values.update(shard=None, executor="local", ray_address=None, quiet=True)
    return values


class ShardWorker:
    """One Ray actor: the engine built once, then one shard examined."""

    def __init__(self, command: str, values: dict, threads: int) -> None:
        import torch

        from btxrd_cam.commands.merge import SETTINGS

        # the driver's intra-op threads: a convolution's sums are split by thread, so its last bits depend on how
        # many there are (Ray gives an actor of one CPU one thread), and the report must not
        torch.set_num_threads(threads)
        from btxrd_cam.pipeline import command_module
        from btxrd_cam.settings import build_settings

        self.module = command_module(command)
        self.settings = build_settings(SETTINGS[command], **values)
        self.engine = self.module.make_engine(self.settings)

    def run(self, index: int, count: int) -> Part:
        from btxrd_cam.outputs import OutputFolder

        outputs = OutputFolder(self.settings.out) if hasattr(self.settings, "out") else None
        part = self.module.examine(self.settings, self.engine, outputs, Shard(index, count))
        part.batch_size = self.settings.batch_size
        return part


def run_on_ray(command: str, settings) -> list[Part]:
    """Every shard of the run on Ray (a local Ray is started, and stopped after, unless one is running or
    `--ray-address` names a cluster); the parts, each also written under <out>/shards/<command>/."""
    try:
        import ray
    except ImportError:
        raise BtxrdCamError(f"--executor ray needs Ray: {RAY_HINT}") from None
    started = False
    if not ray.is_initialized():
        try:
            if settings.ray_address:
                ray.init(address=settings.ray_address, log_to_driver=False)
            else:
                ray.init(include_dashboard=False, log_to_driver=False)
        except Exception as exc:  # ConnectionError and the like: Ray's own types vary by version
            raise BtxrdCamError(f"--ray-address: cannot reach Ray ({one_line(exc, 160)})") from None
        started = True
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if gpus:
            count, options = gpus, {"num_gpus": 1, "num_cpus": 1}
        else:
            count, options = max(1, int(resources.get("CPU", 1)) // settings.ray_cpus), {"num_cpus": settings.ray_cpus}
        import torch

        values = worker_settings(settings)
        actor = ray.remote(**options)(ShardWorker)
        workers = [actor.remote(command, values, torch.get_num_threads()) for _ in range(count)]
        pending = {worker.run.remote(k, count): k for k, worker in enumerate(workers)}
        parts = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(done[0])
            try:
                part = ray.get(done[0])
            except Exception as exc:  # RayActorError, RayTaskError, a worker killed for memory
                raise BtxrdCamError(
                    f"shard {index}/{count} failed on Ray ({one_line(exc, 200)}); the other shards' parts are under "
                    f"{Path(values['out']) / 'shards' / command}: re-run it alone with --shard {index}/{count}, then "
                    "btxrd-cam merge"
                ) from None
            write_part(part, Path(values["out"]))
            parts.append(part)
        return parts
    finally:
        if started:
            ray.shutdown()

"""SLURM jobs that carry an extraction's Dask workers.

dask-jobqueue renders each job's script from the user's `jobqueue.slurm` settings (cores, memory,
partition, GPUs, ...) and runs the scheduler; submitting, watching and replacing the jobs happens
here, so that a job that is cancelled, preempted, killed or past its walltime costs only the shards
it held: the scheduler hands them to another worker, and a new job takes the lost one's place, up to
a bound. Every way jobs cannot be had ends in one line that names the setting to change."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field

import dask
import dask.utils

from cache_schemas import VlcacheError

SETTINGS = "jobqueue.slurm"
WHERE = "dask's config: ~/.config/dask/jobqueue.yaml, or a folder named by DASK_CONFIG " \
        "(workflows/recipes/jobqueue.yaml is a template)"
RESUME = "committed shards are kept: rerun the same command to resume"
# squeue states of a job that may still bring (or keeps) a worker; any other state, or none, is an end.
ALIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "RESIZING", "REQUEUED", "REQUEUE_HOLD",
                   "REQUEUE_FED", "SIGNALING", "STAGE_OUT"})
# Reasons SLURM gives a pending job that can never start as submitted: the settings must change.
NEVER_STARTS = {
    "PartitionConfig": "it asks for more than the partition allows (cores, memory or GPUs)",
    "PartitionNodeLimit": "it asks for more nodes than the partition allows",
    "PartitionTimeLimit": "its walltime exceeds the partition's limit",
    "BadConstraints": "no node satisfies its constraints",
    "InvalidAccount": "its account is not valid",
    "InvalidQOS": "its QOS is not valid",
}
# What sbatch's refusals mean, and the setting that fixes each.
REFUSALS = (
    ("invalid partition", "queue", "name a partition that exists (sinfo lists them)"),
    ("memory specification can not be satisfied", "memory", "ask for at most what a node has (sinfo -o '%P %c %m')"),
    ("requested node configuration is not available", "cores",
     "ask for at most the cores, memory and GPUs a node has (sinfo -o '%P %c %m %G'); job_cpu and "
     "job_extra_directives count too"),
    ("time limit", "walltime", "ask for at most the partition's time limit (sinfo -o '%P %l')"),
    ("invalid account", "account", "name an account you may charge (sacctmgr show assoc user=$USER)"),
    ("invalid qos", "job_extra_directives", "name a QOS your account may use"),
)


def check_settings() -> None:
    """Refuse, before anything starts, what dask-jobqueue would turn into a traceback."""
    if shutil.which("sbatch") is None:
        raise VlcacheError("--slurm-jobs needs SLURM's sbatch on this machine's PATH; run where jobs can be "
                           "submitted, or use --scheduler-address or local --workers")
    settings = dask.config.get(SETTINGS, {}) or {}
    if not isinstance(settings, dict):
        raise VlcacheError(f"{SETTINGS} must be a mapping of settings (cores, memory, ...), not "
                           f"{type(settings).__name__}, in {WHERE}")
    missing = [key for key in ("cores", "memory") if settings.get(key) is None]
    if missing:
        raise VlcacheError(f"--slurm-jobs needs {' and '.join(f'{SETTINGS}.{k}' for k in missing)} (what one job "
                           f"books) in {WHERE}")
    _check_sizes(settings)
    interface = settings.get("interface")
    if interface is not None:
        import psutil

        known = sorted(psutil.net_if_addrs())
        if interface not in known:
            raise VlcacheError(f"{SETTINGS}.interface is {interface!r}, which is not a network interface of this "
                               f"machine ({', '.join(known)}): set it, in {WHERE}, to the network your compute "
                               "nodes share with it")


def _check_sizes(settings: dict) -> None:
    """cores, processes and memory as dask-jobqueue divides them (a zero there is a ZeroDivisionError)."""
    cores, processes = settings["cores"], settings.get("processes")
    if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
        raise VlcacheError(f"{SETTINGS}.cores must be a whole number of cores, at least 1, got {cores!r}, in {WHERE}")
    if processes is not None and (isinstance(processes, bool) or not isinstance(processes, int)
                                  or not 1 <= processes <= cores):
        raise VlcacheError(f"{SETTINGS}.processes must be a whole number from 1 to cores ({cores}), got "
                           f"{processes!r}, in {WHERE}")
    try:
        memory = dask.utils.parse_bytes(settings["memory"])
    except (ValueError, TypeError):
        memory = 0
    if memory <= 0:
        raise VlcacheError(f"{SETTINGS}.memory must be a size such as '16GB', got {settings['memory']!r}, in {WHERE}")


def start_scheduler():
    """dask-jobqueue's SLURMCluster with no jobs of its own: the scheduler on the interface the settings
    name, and the job script they describe. Its dashboard takes a free port unless the settings fix one."""
    from dask_jobqueue import SLURMCluster

    options = {"dashboard_address": ":0", **(dask.config.get(f"{SETTINGS}.scheduler-options", {}) or {})}
    try:
        return SLURMCluster(scheduler_options=options)
    except (ValueError, TypeError, KeyError, ArithmeticError, OSError) as exc:  # whatever a setting raises
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VlcacheError(f"dask-jobqueue refused the {SETTINGS} settings ({first}); fix them in {WHERE}") from None


@dataclass
class Job:
    name: str  # the Dask worker's name (a job of several processes names them name-0, name-1, ...)
    id: str
    submitted: float = field(default_factory=time.monotonic)
    joined: bool = False  # its worker has been seen by the scheduler


class SlurmJobs:
    """`count` jobs kept running for one extraction: jobs that end are replaced, at most `replacements`
    times in all. `check`, called while the run waits for results, does the watching."""

    def __init__(self, scheduler_address: str, count: int, replacements: int, poll: float = 5.0):
        self.scheduler_address = scheduler_address
        self.count, self.replacements, self.poll = count, replacements, poll
        self.jobs: dict[str, Job] = {}
        self.ended: list[tuple[Job, str]] = []  # (job, its last state), in the order they ended
        self._next_index = 0
        self._last_poll = 0.0
        self._any_joined = False
        self._bound_said = False

    # -- submitting ---------------------------------------------------------------------------------

    def fill(self) -> list[str]:
        """Submit jobs until `count` are alive, replacing ended ones while the bound allows; the run goes
        on with fewer jobs once it is reached, and ends (one line) when none is left."""
        events = []
        while len(self.jobs) < self.count:
            replacing = self._next_index >= self.count
            if replacing and self._next_index - self.count >= self.replacements:
                if not self.jobs:
                    raise VlcacheError(
                        f"every SLURM job ended before the extraction finished ({self._endings()}) and "
                        f"--slurm-replacements {self.replacements} allows no more; {RESUME}")
                if not self._bound_said:
                    self._bound_said = True
                    events.append(f"--slurm-replacements {self.replacements} reached: going on with "
                                  f"{len(self.jobs)} jobs")
                break
            try:
                job = self._submit(f"vlcache-{self._next_index}")
            except VlcacheError as exc:
                raise VlcacheError(f"{exc}; {RESUME}" if replacing else str(exc)) from None
            self._next_index += 1
            self.jobs[job.name] = job
            if replacing:
                events.append(f"submitted SLURM job {job.id} in place of {self._endings(1)}")
        return events

    def _submit(self, name: str) -> Job:
        from dask_jobqueue.slurm import SLURMJob

        script = SLURMJob(self.scheduler_address, name=name).job_script()
        try:
            done = subprocess.run(["sbatch", "--parsable"], input=script, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise VlcacheError(f"sbatch could not submit a job ({exc}); {RESUME}") from None
        if done.returncode != 0:
            raise VlcacheError(_refusal(done.stderr))
        return Job(name, done.stdout.strip().split(";")[0])

    # -- watching -----------------------------------------------------------------------------------

    def check(self, worker_names: set[str]) -> list[str]:
        """Mark the jobs whose workers joined, replace those that ended, and give up (one line) where
        jobs cannot be had. `worker_names`: the workers the scheduler has now. Returns what happened."""
        for job in self.jobs.values():
            if not job.joined and any(w == job.name or w.startswith(f"{job.name}-") for w in worker_names):
                job.joined = self._any_joined = True
        now = time.monotonic()
        if now - self._last_poll < self.poll:
            return []
        self._last_poll = now
        states = self._states()
        if states is None:  # squeue failed (a busy controller): look again next time
            return []
        events = []
        for job in list(self.jobs.values()):
            state, reason = states.get(job.id, ("ENDED", ""))
            if state in ALIVE:
                if state == "PENDING" and reason in NEVER_STARTS:
                    raise VlcacheError(f"SLURM job {job.id} can never start: {NEVER_STARTS[reason]} ({reason}); "
                                       f"change the {SETTINGS} settings in {WHERE}")
                continue
            del self.jobs[job.name]
            self.ended.append((job, state))
            if state in ("COMPLETED", "FAILED") and not self._any_joined:
                # Its worker gave up on its own before any worker ever connected: replacing it would repeat that.
                raise VlcacheError(
                    f"SLURM job {job.id} ended ({state}) before any worker reached the scheduler at "
                    f"{self.scheduler_address}: see the job's log ({SETTINGS}.log_directory); if the worker could "
                    f"not connect, set {SETTINGS}.interface to a network the compute nodes share with this machine, "
                    f"in {WHERE}; {RESUME}")
            hint = f" (raise {SETTINGS}.memory)" if state == "OUT_OF_MEMORY" else ""
            events.append(f"SLURM job {job.id} ended ({state}){hint}; the shards it held go to other workers")
        return events + self.fill()

    def describe(self) -> str:
        """The jobs alive, as squeue sees them: what a user checks when no worker comes."""
        states = self._states() or {}
        return ", ".join(f"job {j.id} {' '.join(filter(None, states.get(j.id, ('ENDED', ''))))}"
                         for j in self.jobs.values()) or "no job alive"

    def _states(self) -> dict[str, tuple[str, str]] | None:
        if not self.jobs:
            return {}
        try:
            done = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%i|%T|%r",
                                   f"--jobs={','.join(j.id for j in self.jobs.values())}"],
                                  capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if done.returncode != 0:
            # squeue refuses the whole list once one id has been purged: ask for each alone.
            if "Invalid job id" in done.stderr and len(self.jobs) > 1:
                return self._states_one_by_one()
            return {} if "Invalid job id" in done.stderr else None
        return _parse_states(done.stdout)

    def _states_one_by_one(self) -> dict[str, tuple[str, str]] | None:
        states = {}
        for job in self.jobs.values():
            done = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%i|%T|%r", f"--jobs={job.id}"],
                                  capture_output=True, text=True, timeout=60)
            if done.returncode != 0 and "Invalid job id" not in done.stderr:
                return None
            states.update(_parse_states(done.stdout))
        return states

    def _endings(self, last: int = 3) -> str:
        return ", ".join(f"job {job.id} ({state})" for job, state in self.ended[-last:])

    # -- ending -------------------------------------------------------------------------------------

    def cancel(self) -> None:
        """scancel every job still alive (their workers would otherwise wait for a scheduler that is gone)."""
        if self.jobs:
            subprocess.run(["scancel", *(j.id for j in self.jobs.values())], capture_output=True, timeout=120)
            self.jobs.clear()


def _parse_states(out: str) -> dict[str, tuple[str, str]]:
    states = {}
    for line in out.splitlines():
        job_id, _, rest = line.strip().partition("|")
        state, _, reason = rest.partition("|")
        states[job_id] = (state.split()[0] if state else "ENDED", reason.strip())
    return states


def _refusal(stderr: str) -> str:
    """sbatch's refusal as one line naming the setting to change."""
    lines = [line.removeprefix("sbatch: error: ").strip() for line in stderr.strip().splitlines() if line.strip()]
    said = "; ".join(lines) or "no reason given"
    for words, key, fix in REFUSALS:
        if words in said.lower():
            return f"SLURM refused the job ({said}): {fix}, in {SETTINGS}.{key} ({WHERE})"
    return f"SLURM refused the job ({said}); check the {SETTINGS} settings ({WHERE})"

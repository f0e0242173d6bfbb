"""A real one-node SLURM cluster for the tests: munged, slurmctld and slurmd, on loopback.

The configuration is written to a temporary folder and copied to /etc/slurm/ (any files there
are restored afterwards): snakemake-executor-plugin-slurm's job step strips SLURM_* variables,
SLURM_CONF included, so `srun` inside a job only finds the configuration at its default path.
The node declares 8 CPUs (config_overrides, whatever the hardware) and two GPUs of type
`testgpu` backed by character device nodes, so `--gpus=testgpu:N` jobs get real GRES
allocations and SLURM sets CUDA_VISIBLE_DEVICES. There is no accounting database: jobs stay
visible to `scontrol`/`squeue` for MinJobAge = 300 s, and completed jobs are written to
jobcomp.log.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SLURM_DIR = Path("/etc/slurm")
GPU_TYPE = "testgpu"


def slurm_available() -> bool:
    return all(shutil.which(b) for b in ("slurmctld", "slurmd", "munged", "sbatch", "scontrol"))


def install_slurm() -> None:
    """Debian's packages; needs root (CI runs as root, .ci/run installs them first anyway)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"], check=True, env=env)


class SlurmCluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.node = socket.gethostname().split(".")[0]
        self.log_dir = root / "log"
        self.jobcomp = self.log_dir / "jobcomp.log"
        self._backup: dict[str, bytes | None] = {}
        self._pids: list[int] = []

    def _config(self, gres_files: str) -> tuple[str, str]:
        r = self.root
        slurm_conf = f"""\
ClusterName=cvpipe-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={self.log_dir}/slurmctld.log
SlurmdLogFile={self.log_dir}/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
DefMemPerCPU=500
MinJobAge=300
KillWait=30
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={self.jobcomp}
GresTypes=gpu
NodeName={self.node} NodeAddr=127.0.0.1 CPUs=8 RealMemory=16000 Gres=gpu:{GPU_TYPE}:2 State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""
        return slurm_conf, f"Name=gpu Type={GPU_TYPE} File={gres_files}\n"

    def _fake_gpus(self) -> str:
        """Two GPU device nodes (character devices like /dev/null), or plain files if mknod is
        not allowed (jobs still schedule, but SLURM then sets no CUDA_VISIBLE_DEVICES)."""
        for i in (0, 1):
            path = self.root / f"fakegpu{i}"
            try:
                os.mknod(path, 0o666 | 0o020000, os.makedev(1, 3))
            except (PermissionError, OSError):
                path.touch()
        return f"{self.root}/fakegpu[0-1]"

    def start(self) -> None:
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        slurm_conf, gres_conf = self._config(self._fake_gpus())
        SLURM_DIR.mkdir(parents=True, exist_ok=True)
        for name, text in (("slurm.conf", slurm_conf), ("gres.conf", gres_conf)):
            (self.root / name).write_text(text)
            target = SLURM_DIR / name
            self._backup[name] = target.read_bytes() if target.exists() else None
            shutil.copy(self.root / name, target)
        if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode != 0:
            Path("/run/munge").mkdir(parents=True, exist_ok=True)
            shutil.chown("/run/munge", "munge", "munge")
            if not Path("/etc/munge/munge.key").exists():
                subprocess.run(["mungekey", "--create"], check=True)
            subprocess.run(["munged", "--force", f"--pid-file={self.root}/munged.pid"], check=True)
            self._pids.append(int((self.root / "munged.pid").read_text()))
        for name in ("slurmctld", "slurmd"):
            subprocess.run([name], check=True)  # daemonises, then writes its pid file
            self._pids.append(self._wait_for_pid(self.root / f"{name}.pid"))
        deadline = time.time() + 60
        while time.time() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
            if state.stdout.strip() == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"the SLURM node never became idle; see {self.log_dir}")

    def _wait_for_pid(self, path: Path) -> int:
        deadline = time.time() + 30
        while time.time() < deadline:
            text = path.read_text().strip() if path.exists() else ""
            if text:
                return int(text)
            time.sleep(0.1)
        raise RuntimeError(f"{path} never appeared; see {self.log_dir}")

    def stop(self) -> None:
        for pid in reversed(self._pids):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(50):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        for name, content in self._backup.items():
            target = SLURM_DIR / name
            if content is None:
                target.unlink(missing_ok=True)
            else:
                target.write_bytes(content)

    def jobs(self) -> list[dict[str, str]]:
        """Every job the controller still knows (MinJobAge), as scontrol's key=value fields."""
        out = subprocess.run(
            ["scontrol", "show", "job", "-o"], capture_output=True, text=True
        ).stdout
        jobs = []
        for line in out.splitlines():
            if line.startswith("JobId="):
                jobs.append(dict(f.split("=", 1) for f in line.split() if "=" in f))
        return jobs

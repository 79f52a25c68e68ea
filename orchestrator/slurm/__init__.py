"""The same job on a Slurm cluster: one batch job per run, submitted from a login node over SSH.

    script    the sbatch script and command, and the ranks' environment (pure: what --dry-run prints)
    queue     Slurm's state from plain formatted `squeue` / `scontrol` / `sbatch` output (pure)
    submit    --dry-run, check and up: the checks before anything is queued, push, setup, sbatch
    report    the job's course and end: the login node's follower, the run's files, the verdict
    lifecycle status, stop and logs of a recorded run

The inventory's `slurm:` section (instead of `hosts:`) is read by inventory/slurm.py.
Nothing is installed on the cluster: the login node needs SSH, Slurm's clients and a python3;
the run lives in `workdir` on the shared file system, where every node reads and writes it.
"""

"""``python -m trainer``: ONE data-parallel rank of the seed's MNIST MLP.

Placement (see ``trainer/process_group.py``)::

    # seed style, by hand in two shells (rank 0 may listen on tcp://0.0.0.0:PORT)
    python -m trainer --init-method tcp://10.0.0.1:23456 --rank 0 --world-size 2
    python -m trainer --init-method tcp://10.0.0.1:23456 --rank 1 --world-size 2
    # torchrun style: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT
    torchrun --nnodes 2 --nproc-per-node 2 ... -m trainer
    # neither: a single rank on its own

Output (logfmt on stdout, one line per event, flushed)::

    rendezvous rank=R world_size=W backend=gloo          just before init_process_group
    joined rank=R local_rank=L world_size=W backend=gloo device=cpu      right after init_process_group
    fallback dataset=generated reason="..."              local rank 0 of each host, when MNIST failed
    data rank=R dataset=mnist train=N test=M fingerprint=F threads=T seconds=S
    resume rank=R checkpoint=PATH|none epoch=E step=S    with --resume
    epoch=E rank=R loss=X samples_per_s=Y [test_accuracy=Z]   every epoch, E 1-based; accuracy on rank 0
    distctl: step=N total=T epoch=E loss=X samples_per_s=Y   right after it: steps of the whole run
    stopped rank=R epoch=E step=S checkpoint=PATH|none reason=SIGTERM [note="..."]   then exit 143
    done rank=R param_sha256=HEX test_accuracy=Z          once at the end
    error rank=R message="..."                            on stderr, then a non-zero exit

``param_sha256`` is the sha256 over all parameters in definition order, of the bytes of the
contiguous CPU tensors; rank 0 (every rank in fact) compares all ranks' digests and exits 3 with
``error ... message="replicas diverged: ..."`` if they differ.

Exit codes (``trainer.errors.ExitCode``): 0 done, 1 error (data missing, bad checkpoint),
2 bad arguments, 3 replicas diverged, 4 peer lost (a peer died or a collective exceeded
--timeout), 143 stopped by SIGTERM/SIGINT (or --stop-after-epoch/--stop-after-step) after
the checkpoint was written: rerun with --resume.

Stopping: a SIGTERM or SIGINT to any rank once training runs makes all ranks agree (a cheap
all-reduce every --stop-check-steps steps and at each epoch's end) on one step; the first
rank of every host writes ``ckpt-EEEEEE-SSSSSS.pt`` and ``latest.pt`` there (rank 0's copy
is the one read) and every rank prints ``stopped`` and exits 143.
A signal that comes while the ranks already stop changes nothing, and a rank that was itself
signalled, or knows the checkpoint is written, still ends 143 when a peer leaves during that
last step (``note`` says so).  ``--resume`` continues from there; on CPU with a fixed seed the
final parameters equal those of an uninterrupted run, for stops at an epoch's end or
mid-epoch.  Before training starts the signals keep their default effect (a shell then also
reports 143 for SIGTERM, but no ``stopped`` line was printed and no checkpoint written).  A dead
peer or a stuck collective ends the run with exit 4 within ``--timeout`` seconds (see
``trainer/process_group.py`` for what gloo and nccl each do).

Data: torchvision's MNIST files under ``--data`` (downloaded with ``--download``), decoded once
into normalised tensors on the training device.  ``--dataset generated`` or ``--fallback
generated`` trains on seeded generated digits written in the same layout (``trainer/generated.py``).
"""

from trainer.cli import main

main()

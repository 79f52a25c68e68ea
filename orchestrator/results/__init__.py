"""What a run leaves behind, brought back to the workstation.

    pull          `distctl pull`
    outputs       job.outputs: listed and streamed with digests
    destinations  where each pulled file lands, and what is already there
    ckptinfo      reading the trainer's checkpoint summary
"""

"""Before and during launch: discover the hosts, check them, build and push artifacts, start ranks.

    discover   every host's facts at once
    preflight  what must hold before anything is pushed
    codepack   job.code: the file walker and the deterministic tar
    packing    the trainer's and the data's tars, and the job's artifact list
    execute    the plan's prepare, push, setup and launch steps, walked phase by phase
"""

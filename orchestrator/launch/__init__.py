"""Before and during launch: discover the hosts, check them, build and push artifacts, start ranks.

    discover   every host's facts at once
    preflight  what must hold before anything is pushed
    artifacts  code, trainer and data as content-addressed tars: one walker, one tar writer
    execute    the plan's prepare, push, setup and launch steps, walked phase by phase
"""

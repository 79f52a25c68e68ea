"""A launched run: following it, healing links, watching for failures, stopping it, asking its state.

    watch      the attached `up`: rank exits, teardown, restarts' news
    links      a follower per host, re-followed after a lost link
    lifecycle  stop and the host-side status script
    status     `distctl status`: every host at once
    adhoc      `distctl exec`
"""

"""SSH: the only package that imports Fabric and paramiko (in `remote`, lazily).

    remote      connections, commands, streams; host keys and ssh_config applied as `ssh` would
    config      ssh_config resolved as OpenSSH resolves it (`ssh -G` is the oracle)
    knownhosts  known_hosts files, read line by line
    group       every host at once: bounded fan-out and `GroupResult`
    stream      one selectors loop turning every host's output into whole lines
"""

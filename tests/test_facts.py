"""Discovery parsers on captured output: no SSH needed."""

import pytest

from orchestrator.facts import (Clock, HostFacts, IfAddr, Route, choose_route, clock_warnings, describe_clock,
                                master_candidates, measure_clock, parse_facts, parse_routes)

DISCOVERY = """home=/root
hostname=node2
has_ip=1
addr=1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
addr=2: ens5@if9    inet 10.213.0.12/24 brd 10.213.0.255 scope global ens5\\       valid_lft forever
python=3.11.7
torch=2.14.1
torchvision=0.29.1
gpus=0
"""


def test_parse_facts_reads_every_key():
    f = parse_facts(DISCOVERY)
    assert f == HostFacts(hostname="node2", home="/root",
                          addresses=(IfAddr("lo", "127.0.0.1", 8), IfAddr("ens5", "10.213.0.12", 24)),
                          python="3.11.7", torch="2.14.1", torchvision="0.29.1", gpus=0, has_ip=True)
    assert f.iface_of("10.213.0.12") == "ens5"


def test_missing_python_and_torch_are_none():
    f = parse_facts("home=/h\nhostname=x\nhas_ip=0\npython=\ngpus=\n")
    assert (f.python, f.torch, f.gpus, f.has_ip) == (None, None, 0, False)


def test_a_mac_reports_its_loopback_without_ip():
    f = parse_facts("home=/Users/u\nhostname=mac\nhas_ip=0\npython=3.12.1\ntorch=2.14.1\nloopback=lo0\ngpus=0\n")
    assert (f.has_ip, f.addresses, f.loopback) == (False, (), "lo0")
    assert parse_facts(DISCOVERY).loopback is None  # an older probe: the caller assumes lo


ROUTES = """route 10.213.0.11 10.213.0.11 dev ens5 src 10.213.0.12 uid 0 \\    cache
route 10.214.0.11 10.214.0.11 via 10.213.0.1 dev ens5 src 10.213.0.12 uid 0 \\    cache
route 192.0.2.2 local 192.0.2.2 dev lo src 192.0.2.2 uid 0 \\    cache <local>
route 10.99.0.1 RTNETLINK answers: Network is unreachable
"""


def test_parse_routes_direct_routed_local_and_unreachable():
    assert parse_routes(ROUTES) == [
        Route("10.213.0.11", "ens5", None, False),
        Route("10.214.0.11", "ens5", "10.213.0.1", False),
        Route("192.0.2.2", "lo", None, True),
        Route("10.99.0.1", None, None, False, "RTNETLINK answers: Network is unreachable"),
    ]


def test_choose_route_prefers_direct_and_skips_loopback():
    routes = parse_routes(ROUTES)
    assert choose_route(routes).dest == "10.213.0.11"
    assert choose_route(routes[1:]).dest == "10.214.0.11"
    assert choose_route(routes[2:]) is None


def test_master_candidates_put_the_connected_address_first_and_skip_loopback():
    rank0 = parse_facts("addr=1: lo inet 127.0.0.1/8 scope host lo\n"
                        "addr=2: eth0 inet 10.0.0.5/24 scope global eth0\n"
                        "addr=3: eth1 inet 10.1.0.5/24 scope global eth1\n")
    assert master_candidates(rank0, "10.1.0.5") == ["10.1.0.5", "10.0.0.5"]
    assert master_candidates(rank0, None) == ["10.0.0.5", "10.1.0.5"]


# ------------------------------------------------------------ clocks


def test_the_host_clock_is_read_from_discovery_and_placed_at_the_round_trips_midpoint():
    f = parse_facts(DISCOVERY + "time=1700000105.250000\n")
    assert f.time == 1700000105.25
    assert parse_facts(DISCOVERY).time is None and parse_facts("time=soon\n").time is None  # an older probe
    # asked at 100.0 by the workstation's clock, answered at 100.5: the host read its clock at ~100.25
    clock = measure_clock(f.time, 1700000100.0, 1700000100.5)
    assert clock == Clock(offset=5.0, error=0.25)
    assert measure_clock(None, 1.0, 2.0) is None
    assert describe_clock(clock) == "clock +5.00 s (±0.25)" and describe_clock(None) == "clock unknown"


@pytest.mark.parametrize("clock, warned", [
    (Clock(5.0, 0.05), "node2: its clock is 5.0 s ahead of this workstation's (±0.05 s)"),
    (Clock(-3.2, 0.1), "node2: its clock is 3.2 s behind this workstation's (±0.10 s)"),
    (Clock(2.1, 0.2), None),  # maybe only 1.9 s off: a slow discovery alone never warns
    (Clock(0.01, 0.02), None),
    (None, None),  # not measured (a probe from an older distctl)
])
def test_a_clock_more_than_2_s_off_is_one_warning_naming_the_host(clock, warned):
    lines = clock_warnings({"node1": Clock(0.0, 0.01), "node2": clock})
    assert [line.split(";")[0] for line in lines] == ([warned] if warned else [])
    assert all("sync the clocks" in line for line in lines)


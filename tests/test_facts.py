"""Discovery parsers on captured output, and the route decision on parsed routes: no SSH needed."""

import pytest

from orchestrator.plan.facts import (Clock, HostFacts, IfAddr, Route, choose_master, choose_route, clock_warnings,
                                describe_clock, master_candidates, measure_clock, parse_facts, parse_routes,
                                reaches_directly)

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


def _routes(table: dict[str, list[str]]) -> dict[str, list[Route]]:
    """worker -> routes, from `ip -4 -o route get` answers written as `DEST ANSWER`."""
    return {w: parse_routes("".join(f"route {line}\n" for line in lines)) for w, lines in table.items()}


DIRECT_A = "10.0.0.1 10.0.0.1 dev eth0 src 10.0.0.2 uid 0"
DIRECT_B = "10.1.0.1 10.1.0.1 dev eth1 src 10.1.0.2 uid 0"
ROUTED_A = "10.0.0.1 10.0.0.1 via 10.9.0.1 dev ens5 src 10.9.0.3 uid 0"
ROUTED_B = "10.1.0.1 10.1.0.1 via 10.9.0.1 dev ens5 src 10.9.0.3 uid 0"
NO_ROUTE_B = "10.1.0.1 RTNETLINK answers: Network is unreachable"
LOOPBACK_A = "10.0.0.1 local 10.0.0.1 dev lo src 10.0.0.1 uid 0"

# (case, rank 0's candidates in order, each worker's route answers,
#  expected: (address, {worker: interface}, unreached workers))
MASTER_CASES = [
    ("the first candidate, reached directly by all", ["10.0.0.1", "10.1.0.1"],
     {"w1": [DIRECT_A, DIRECT_B], "w2": [DIRECT_A]}, ("10.0.0.1", {"w1": "eth0", "w2": "eth0"}, ())),
    ("a later candidate every worker reaches directly beats a routed first one", ["10.0.0.1", "10.1.0.1"],
     {"w1": [ROUTED_A, DIRECT_B], "w2": [DIRECT_A, DIRECT_B]}, ("10.1.0.1", {"w1": "eth1", "w2": "eth1"}, ())),
    ("routed when no candidate is direct for all: the first reachable one", ["10.0.0.1", "10.1.0.1"],
     {"w1": [ROUTED_A, ROUTED_B], "w2": [DIRECT_A, NO_ROUTE_B]}, ("10.0.0.1", {"w1": "ens5", "w2": "eth0"}, ())),
    ("a candidate one worker cannot reach is skipped", ["10.1.0.1", "10.0.0.1"],
     {"w1": [DIRECT_A, DIRECT_B], "w2": [DIRECT_A, NO_ROUTE_B]}, ("10.0.0.1", {"w1": "eth0", "w2": "eth0"}, ())),
    ("a route over loopback is no way to rank 0 (the worker has that address itself)", ["10.0.0.1"],
     {"w1": [LOOPBACK_A], "w2": [DIRECT_A]}, (None, {}, ("w1",))),
    ("no candidate reachable by all: every worker missing a route is named", ["10.0.0.1", "10.1.0.1"],
     {"w1": [DIRECT_A, NO_ROUTE_B], "w2": [NO_ROUTE_B], "w3": [DIRECT_A, DIRECT_B]}, (None, {}, ("w1", "w2"))),
    ("a worker that reported nothing for a candidate has no route to it", ["10.0.0.1"],
     {"w1": [DIRECT_A], "w2": []}, (None, {}, ("w2",))),
]


@pytest.mark.parametrize("candidates, table, expected", [c[1:] for c in MASTER_CASES],
                         ids=[c[0] for c in MASTER_CASES])
def test_choose_master(candidates, table, expected):
    choice = choose_master(candidates, _routes(table))
    assert (choice.address, {w: r.dev for w, r in choice.routes.items()}, choice.unreached) == expected


# (case, the address, each worker's route answers, expected)
DIRECT_CASES = [
    ("every worker direct", "10.0.0.1", {"w1": [DIRECT_A], "w2": [DIRECT_A, ROUTED_B]}, True),
    ("one worker through a gateway", "10.0.0.1", {"w1": [DIRECT_A], "w2": [ROUTED_A]}, False),
    ("one worker without a route", "10.1.0.1", {"w1": [DIRECT_B], "w2": [NO_ROUTE_B]}, False),
    ("one worker asked only about another address", "10.1.0.1", {"w1": [DIRECT_B], "w2": [DIRECT_A]}, False),
]


@pytest.mark.parametrize("address, table, expected", [c[1:] for c in DIRECT_CASES], ids=[c[0] for c in DIRECT_CASES])
def test_reaches_directly_decides_whether_discovery_looks_further(address, table, expected):
    assert reaches_directly(address, _routes(table)) is expected


def test_preflight_names_a_host_whose_python_is_below_the_floor():
    from orchestrator.errors import GroupError
    from orchestrator.inventory.model import parse_inventory
    from orchestrator.launch.preflight import preflight_facts, trainer_python_floor

    assert trainer_python_floor() == (3, 10)  # pyproject's requires-python, stated once
    text = "hosts: [{name: a, address: 10.0.0.1}, {name: b, address: 10.0.0.2}]\n"
    facts = {"a": parse_facts("python=3.11.7\ntorch=2.14.1\n"), "b": parse_facts("python=3.9.18\ntorch=2.14.1\n")}
    with pytest.raises(GroupError) as trainer:
        preflight_facts(parse_inventory(text, "inv.yaml"), facts)
    assert [str(e) for e in trainer.value.errors] == [
        "b: python 3.9.18 at 'python3' is too old: the bundled trainer (and torch) need 3.10 or newer "
        "(set 'python' for this host)"]
    program = parse_inventory(text + "job: {command: python run.py}\n", "inv.yaml")
    preflight_facts(program, facts)  # distctl's own host-side programs need only 3.8
    with pytest.raises(GroupError, match=r"python 3\.7\.3 .* distctl's host-side programs need 3\.8 or newer"):
        preflight_facts(program, {**facts, "b": parse_facts("python=3.7.3\n")})
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


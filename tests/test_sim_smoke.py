"""Given a simulator process, when a client logs in, then it sees a pool (sanity of the fixture)."""


def test_ready_line_and_login(sim):
    assert len(sim.pools) == 2 and sim.control.startswith("http://127.0.0.1:")
    x = sim.session(0).xenapi
    assert len(x.pool.get_all()) == 1
    # the fixture's simulator starts while xdist's other workers start theirs: a sanity bound here
    # (a hang shows); the 2 s ready-line contract is test_sim_cli's, measured on its own launch
    assert sim.startup_seconds < 10.0

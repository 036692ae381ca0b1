from server.engines import EnginePool


def healthy_pool(*urls: str) -> EnginePool:
    pool = EnginePool(list(urls), spill_in_flight=4)
    for url in pool.urls:
        pool.mark(url, True)
    return pool


def test_affinity_is_stable_and_spread_over_engines() -> None:
    pool = healthy_pool("http://a", "http://b", "http://c")
    names = [f"m{i}@v1" for i in range(60)]
    first = {n: pool.candidates(n)[0] for n in names}
    assert first == {n: pool.candidates(n)[0] for n in names}  # same module, same engine
    assert len(set(first.values())) == 3


def test_a_down_engine_moves_only_its_own_modules_and_is_tried_last() -> None:
    pool = healthy_pool("http://a", "http://b", "http://c")
    names = [f"m{i}@v1" for i in range(60)]
    before = {n: pool.candidates(n)[0] for n in names}
    pool.mark("http://a", False)
    after = {n: pool.candidates(n) for n in names}
    for name in names:
        assert after[name][-1] == "http://a"
        if before[name] != "http://a":
            assert after[name][0] == before[name]


def test_requests_spill_over_when_the_preferred_engine_is_busy() -> None:
    pool = healthy_pool("http://a", "http://b")
    preferred, other = pool.candidates("m@v1")
    pool.in_flight[preferred] = 4
    assert pool.candidates("m@v1")[0] == other
    pool.in_flight[preferred] = 3
    assert pool.candidates("m@v1")[0] == preferred

"""Many sites, one fleet: each site's token reaches only its own API, per-site state.

Real processes: two simulators with different tokens and plans, one Redis, real workers.
"""

from __future__ import annotations

import json

import pytest

import subtitle_tasks
from subtitle_tasks import InvalidSubtitleRequest, request_subtitles, runtime
from subtitle_tasks.settings import ConfigurationError, load_settings
from subtitle_tasks.testing import Simulator, SimulatorConfig
from tests.support.callbacks import record

BLOG_TOKEN = "blog-token-not-secret"


@pytest.fixture
def blog_sim():
    config = SimulatorConfig(job_seconds=0.3, preparing_seconds=0.3, token=BLOG_TOKEN, seed=3, rate_limit=30,
                             environments={"staging"})
    with Simulator(config) as sim:
        yield sim


@pytest.fixture
def two_sites(harness_factory, blog_sim, tmp_path):
    token_file = tmp_path / "blog-token"
    token_file.write_text(BLOG_TOKEN + "\n")  # as a mounted secret usually ends
    sites = json.dumps({"blog": {"token_file": str(token_file), "base_url": blog_sim.url,
                                 "environment": "staging"}})
    h = harness_factory(SUBTITLE_TASKS_SITES=sites)
    # The web side knows the aliases but holds no token at all.
    runtime.configure(load_settings({
        "redis_url": h.redis_url, "broker_url": h.redis_url, "key_prefix": h.prefix,
        "queue": h.env["SUBTITLE_TASKS_QUEUE"], "sites": sites}, environ={}))
    return h


def test_requests_on_two_sites_reach_their_own_api_with_their_own_token(two_sites, sim, blog_sim):
    two_sites.worker()
    a = request_subtitles("video-shop", "it-IT", on_ready=record.s("ready", "shop"))
    b = request_subtitles("video-blog", "it-IT", site="blog", on_ready=record.s("ready", "blog"))
    calls = two_sites.wait_for_calls(2)
    assert sorted((c["tag"], c["kind"]) for c in calls) == [("blog", "ready"), ("shop", "ready")]
    # Each simulator only accepts its own token (any other is a 401): both ready means
    # each token went to its own API only.
    assert [p[1] for p in blog_sim.accepted_posts()] == ["video-blog"]
    assert [p[1] for p in sim.accepted_posts()] == ["video-shop"]
    assert {p[0] for p in blog_sim.accepted_posts()} == {"staging"}
    assert subtitle_tasks.status(b.id)["site"] == "blog" and subtitle_tasks.status(a.id)["site"] is None
    assert all(r.status != 401 for r in [*sim.requests(), *blog_sim.requests()])
    assert all(r.status != 429 for r in [*sim.requests(), *blog_sim.requests()])  # each plan respected


def test_the_same_upload_on_two_sites_is_two_generations(two_sites):
    a = request_subtitles("same-id", "it-IT")
    b = request_subtitles("same-id", "it-IT", site="blog")
    assert a.generation_id != b.generation_id and not b.joined
    c = request_subtitles("same-id", "it-IT", site="blog")
    assert c.joined and c.generation_id == b.generation_id


def test_an_unknown_site_is_refused_at_the_edge(two_sites):
    size = two_sites.redis.dbsize()
    for bad in ("nope", "Blog", 5, ""):
        with pytest.raises(InvalidSubtitleRequest) as info:
            request_subtitles("video-x", "it-IT", site=bad)
        assert info.value.field == "site"
    assert two_sites.redis.dbsize() == size


def test_a_site_added_to_the_sites_file_is_known_without_a_restart(tmp_path, redis_server):
    path = tmp_path / "sites.json"
    path.write_text(json.dumps({"shop": {"token_env": "SHOP_TOKEN"}}))
    rt = runtime.configure(load_settings({"redis_url": redis_server.url, "sites_file": str(path)}, environ={}))
    assert rt.site("shop").token_env == "SHOP_TOKEN"
    with pytest.raises(ConfigurationError):
        rt.site("news")
    path.write_text(json.dumps({"shop": {"token_env": "SHOP_TOKEN"},
                                "news": {"token_file": "/run/secrets/news", "environment": "preview"}}))
    assert rt.site("news").environment == "preview"


@pytest.mark.parametrize("raw,match", [
    ('{"Shop": {"token_env": "T"}}', "alias"),
    ('{"shop": {"token_env": "T", "token_file": "/x"}}', "exactly one"),
    ('{"shop": {}}', "exactly one"),
    ('{"shop": {"token_env": "T", "password": "x"}}', "keys"),
    ('[1]', "object"),
    ('{"shop": {"token_env": "T", "base_url": "http://api.example.com"}}', "https"),
])
def test_bad_site_configuration_fails_at_start_naming_it(raw, match):
    with pytest.raises(ConfigurationError, match=match):
        load_settings({"sites": raw}, environ={})

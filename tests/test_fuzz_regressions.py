"""Inputs that once crashed the webhook, found by fuzzing; each must stay answered.

Each regression is checked on the pure functions (`rewrite`, `handle`) and through the ASGI
app, so a crash cannot come back as a 500 at either layer.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from typing import Any

import httpx
import jsonpatch
import pytest

from tests.oracle import admission_reviews, expected
from webhook.app import WebhookApp
from webhook.config import Settings
from webhook.review import BadReview, handle
from webhook.rewrite import Contract, rewrite

SETTINGS = Settings()
CONTRACT = Contract.from_settings(SETTINGS)
BASE = admission_reviews()["hello-classic"]  # istio-proxy is containers[1]


def review_with_proxy_env(env: list[Any]) -> dict[str, Any]:
    review = copy.deepcopy(BASE)
    proxy = review["request"]["object"]["spec"]["containers"][1]
    assert proxy["name"] == SETTINGS.proxy_container
    proxy["env"] = env
    return review


# Found by tests/test_fuzz_api.py: `name not in wanted` raised TypeError (HTTP 500) when an
# env entry's name was a list or an object (unhashable).
UNHASHABLE_ENV_NAMES = [
    pytest.param([{"name": [1]}], id="name-list"),
    pytest.param([{"name": {"a": 1}}], id="name-object"),
    pytest.param([{"name": []}, {"name": "CA_ADDR", "value": "x"}], id="empty-list-then-ca-addr"),
]


@pytest.mark.parametrize("env", UNHASHABLE_ENV_NAMES)
def test_env_entry_with_an_unhashable_name_is_left_alone_and_the_contract_applied(
    env: list[Any],
) -> None:
    pod = review_with_proxy_env(env)["request"]["object"]
    patched = jsonpatch.apply_patch(pod, rewrite(pod, CONTRACT).ops)
    assert patched == expected(pod, SETTINGS)
    proxy_env = patched["spec"]["containers"][1]["env"]
    assert proxy_env[0] == env[0]
    assert [e for e in proxy_env if e.get("name") == SETTINGS.ca_addr_env] == [
        {"name": SETTINGS.ca_addr_env, "value": SETTINGS.ca_addr}
    ]


@pytest.mark.parametrize("env", UNHASHABLE_ENV_NAMES)
def test_env_entry_with_an_unhashable_name_gets_200_and_the_patch(env: list[Any]) -> None:
    review = review_with_proxy_env(env)
    decision = handle(json.dumps(review).encode(), CONTRACT)
    assert decision.outcome == "mutated"

    transport = httpx.ASGITransport(app=WebhookApp(SETTINGS))

    async def post() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/mutate", content=json.dumps(review).encode())

    response = asyncio.run(post())
    assert response.status_code == 200
    answer = response.json()["response"]
    assert answer["uid"] == review["request"]["uid"]
    pod = review["request"]["object"]
    ops = json.loads(base64.b64decode(answer["patch"]))
    assert jsonpatch.apply_patch(pod, ops) == expected(pod, SETTINGS)


# Found by schemathesis (tests/test_fuzz_api.py): `dryRun: 0.0` was coerced to false and the
# review answered; the API server only sends true or false, so anything else is refused.
@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("dryRun", 0.0, "request.dryRun: Input should be a valid boolean"),
        ("dryRun", "yes", "request.dryRun: Input should be a valid boolean"),
        ("uid", 7, "request.uid: Input should be a valid string"),
    ],
)
def test_envelope_values_of_the_wrong_json_type_are_refused_not_coerced(
    field: str, value: Any, reason: str
) -> None:
    review = copy.deepcopy(BASE)
    review["request"][field] = value
    with pytest.raises(BadReview) as raised:
        handle(json.dumps(review).encode(), CONTRACT)
    assert (raised.value.status, raised.value.reason) == (400, reason)

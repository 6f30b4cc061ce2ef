"""atheris target: `webhook.rewrite.rewrite` on pods built from the fuzzer's bytes.

The only exception allowed out of `rewrite` is `InvalidPod`, and only for a pod with a
value of the wrong JSON type; for every pod the patch applies, the input is untouched and a
second pass is a no-op; for a well-typed pod the result is exactly the oracle's. The first
byte chooses between a structured pod (fuzz/common.py) and the bytes read as JSON.

    python -m fuzz.fuzz_rewrite [libFuzzer options] [corpus directory]   # from the repo root
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    import orjson

    from fuzz.common import Built, check_rewrite, pod_from


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeBool():
        check_rewrite(pod_from(fdp))
        return
    try:
        pod = orjson.loads(fdp.ConsumeBytes(fdp.remaining_bytes()))
    except orjson.JSONDecodeError:
        return
    check_rewrite(Built(pod, odd=True))  # any JSON value: InvalidPod is allowed


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

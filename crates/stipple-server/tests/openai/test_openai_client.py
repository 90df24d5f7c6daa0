"""The official `openai` Python package against `stipple serve`: both response formats, the
model list, and a 429 on a spent quota that the SDK does not retry.

Usage: STIPPLE_BIN=target/release/stipple python test_openai_client.py
"""
import base64
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import openai
from openai import OpenAI

REPO = Path(__file__).resolve().parents[4]
BIN = (REPO / os.environ.get("STIPPLE_BIN", "target/release/stipple")).resolve()
PNG = b"\x89PNG\r\n\x1a\n"


def start_server(data_dir):
    env = dict(os.environ, STIPPLE_ANONYMOUS_DAILY_TOKENS="300")
    proc = subprocess.Popen(
        [str(BIN), "serve", "--addr", "127.0.0.1:0", "--data-dir", data_dir, "--model", str(REPO / "testdata/vectors/models/sd_tiny")],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 60
    seen = ""
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
        m = re.search(r"serving on (http://[0-9.:]+)", line)
        if m:
            return proc, m.group(1)
    proc.kill()
    raise RuntimeError(f"server did not start: {seen}")


def openai_requests(base):
    text = urllib.request.urlopen(f"{base}/metrics").read().decode()
    return int(re.search(r"^stipple_openai_image_requests_total (\d+)$", text, re.M).group(1))


def main():
    passed, failed = 0, 0
    with tempfile.TemporaryDirectory() as data_dir:
        proc, base = start_server(data_dir)
        try:
            client = OpenAI(base_url=f"{base}/v1", api_key="sk-any-key-works", max_retries=3)
            checks = []

            def check(name, fn):
                checks.append((name, fn))

            def models():
                ids = [m.id for m in client.models.list().data]
                assert "sd_tiny" in ids, ids

            def b64():
                r = client.images.generate(model="sd_tiny", prompt="a red boat", size="64x64", response_format="b64_json",
                                           extra_body={"steps": 3, "seed": 5})
                assert len(r.data) == 1
                assert base64.b64decode(r.data[0].b64_json).startswith(PNG)

            def url():
                r = client.images.generate(model="dall-e-3", prompt="a blue boat", response_format="url", extra_body={"steps": 3})
                assert urllib.request.urlopen(r.data[0].url).read().startswith(PNG)

            def quota_429_not_retried():
                before = openai_requests(base)
                try:
                    client.images.generate(prompt="one too many", n=2, extra_body={"steps": 3})
                except openai.RateLimitError as e:
                    assert e.response.headers.get("x-should-retry") == "false"
                    assert e.code == "insufficient_quota", e.code
                else:
                    raise AssertionError("expected a 429")
                assert openai_requests(base) - before == 1, "the SDK retried a spent quota"

            check("models", models)
            check("b64_json", b64)
            check("url", url)
            check("quota 429 not retried", quota_429_not_retried)
            for name, fn in checks:
                try:
                    fn()
                    print(f"ok: openai {name}")
                    passed += 1
                except Exception as e:  # report every check
                    print(f"FAILED: openai {name}: {e!r}")
                    failed += 1
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"openai: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

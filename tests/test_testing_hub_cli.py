"""`python -m hubsdd.testing.hub`: the command line the demo script starts."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from hub_fixtures import TOKEN, USER


def test_command_line_server(tmp_path):
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-m", "hubsdd.testing.hub", "--storage", str(tmp_path / "s"),
                             "--token", f"{TOKEN}:{USER}", "--ready-file", str(ready)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 30
        while not ready.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        url = ready.read_text().strip()
        import httpx2

        r = httpx2.get(f"{url}/api/whoami-v2", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.json()["name"] == USER
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0 and out.strip() == url and not ready.exists()

"""The README's first command: the main job on embedded defaults, end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_demo_runs_one_request_to_its_ready_track_and_shuts_down(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CELERY_", "DATOCMS_", "SUBTITLE_TASKS_"))}
    cli = Path(sys.executable).with_name("subtitle-tasks")
    done = subprocess.run([str(cli), "demo", "--timeout", "60"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert "started a local Redis" in out and "started the DatoCMS simulator" in out
    assert "on_ready fired: track sim-track-" in out and "is ready" in out
    assert "worker stopped" in out

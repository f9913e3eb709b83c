"""scripts/floor.py, the bench's pipeline floor, runs its frames through to their PUBACKs."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_floor_pipeline_delivers_every_frame_and_prints_its_cpu_per_reading():
    # It ends only once every frame's reading was acknowledged by the broker it starts.
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "floor.py"), "--rate", "200", "--frames", "60",
                          "--json"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["frames"] == 60 and result["rate"] == 200
    assert result["cpu_us_per_reading"] > 0

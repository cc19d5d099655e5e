"""A stand-in for `clusterai worker`, started by the provider tests: it records what it was given
(argv, name, token) in DIR/NAME.json, optionally starts a child (as a nanny would), prints, sleeps.

Options: --dir DIR --name NAME [--child] [--ignore-term] [--exit-after SECONDS]
It never outlives 60 s, so a broken test cannot leave it behind for long.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--dir", required=True)
parser.add_argument("--name", required=True)
parser.add_argument("--child", action="store_true")
parser.add_argument("--ignore-term", action="store_true")
parser.add_argument("--exit-after", type=float, default=60.0)
args = parser.parse_args()

if args.ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = None
if args.child:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
record = {
    "pid": os.getpid(), "child": child.pid if child else None, "argv": sys.argv, "name": args.name,
    "env_name": os.environ.get("CLUSTERAI_WORKER_NAME"), "profile": os.environ.get("CLUSTERAI_PROFILE"),
    "token": os.environ.get("CLUSTERAI_ENROLLMENT_TOKEN"),
}
path = os.path.join(args.dir, f"{args.name}.json")
with open(path + ".tmp", "w") as f:
    json.dump(record, f)
os.replace(path + ".tmp", path)  # whole, or not there: the test polls for it
print(f"hello from {args.name}", flush=True)
time.sleep(args.exit_after)

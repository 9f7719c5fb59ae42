"""A worker process whose behaviour a test scripts, for operator tests that need a worker to fail,
hang or return a given result. It runs where the real `lathe worker` runs (a pod started by the
node agent), reads the spec the operator put in LATHE_SPEC like the real one, and takes its script
from the file the spec names as model uri: {"sleep": s, "exit": code, "message": text}.
The end-to-end test runs the real worker instead."""

import json
import os
import sys
import time

spec = json.loads(os.environ["LATHE_SPEC"])
args = sys.argv[1:]
term = args[args.index("--termination-log") + 1]
with open(spec["model"]["uri"]) as f:
    script = json.load(f)
print(f"scripted worker for {os.environ.get('LATHE_RESOURCE')} generation {os.environ.get('LATHE_GENERATION')}",
      flush=True)
time.sleep(script.get("sleep", 0))
if script.get("message") is not None:
    with open(term, "w") as f:
        f.write(script["message"])
print(script.get("log", "done"), flush=True)
sys.exit(script.get("exit", 0))

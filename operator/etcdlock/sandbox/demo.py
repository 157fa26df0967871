"""``make run``: a local etcd, and the etcdlock CLI taking one lock in turn with etcdctl.

Four workers (three ``etcdlock lock``, one ``etcdctl lock``) want the same lock at once; they run one at
a time, each with a larger fencing token, while ``etcdlock status`` shows the holder and the queue.
Then a try-lock on the held lock exits 2 and names the holder. Everything started here is stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from etcdlock.sandbox.etcd import LocalEtcd, etcd_binary

LOCK = "demo/nightly-report"
WORK = 'echo "  [$0] holds {lock} with fencing token ${{ETCDLOCK_FENCING_TOKEN:-$ETCD_LOCK_REV}}"; sleep 1'


def etcdlock(*args: str) -> list[str]:
    return [sys.executable, "-m", "etcdlock", *args]


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main() -> int:
    with LocalEtcd() as etcd:
        env = {**os.environ, "ETCDLOCK_ENDPOINTS": etcd.endpoint_list, "ETCDCTL_API": "3"}
        say(f"etcd is up at {etcd.endpoint_list} (data in {etcd.workdir})")
        say(f"four workers want {LOCK} at once: three etcdlock, one etcdctl")
        work = WORK.format(lock=LOCK)
        workers = []
        for name in ("worker-1", "worker-2", "worker-3"):
            cmd = etcdlock("lock", LOCK, "--holder", name, "--", "sh", "-c", work, name)
            workers.append(subprocess.Popen(cmd, env=env))
            time.sleep(0.2)
        ctl = [
            etcd_binary("etcdctl"),
            f"--endpoints={etcd.endpoint_list}",
            "lock",
            LOCK,
            "--",
            "sh",
            "-c",
            work,
            "etcdctl",
        ]
        workers.append(subprocess.Popen(ctl, env=env, stdout=None))
        time.sleep(0.5)
        say(f"etcdlock status {LOCK}")
        subprocess.run(etcdlock("status", LOCK), env=env, check=False)
        for worker in workers:
            worker.wait(timeout=60)
        say(f"etcdctl holds {LOCK}; etcdlock lock --timeout 0 tries once")
        holder = subprocess.Popen(
            [etcd_binary("etcdctl"), f"--endpoints={etcd.endpoint_list}", "lock", LOCK],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None
            holder.stdout.readline()
            tried = subprocess.run(etcdlock("lock", LOCK, "--timeout", "0"), env=env, check=False)
            print(f"  exit status {tried.returncode} (2 = not acquired)")
        finally:
            holder.terminate()
            holder.wait(timeout=10)
        say("done; etcd stopped. Try it yourself: see README.md, 'Programs: the CLI'.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

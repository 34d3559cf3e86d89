"""The process harness (``spx_testing.process``) on real child processes: output captured while the
process runs and bounded, bounded waits, a clean stop or a kill, and the first failure reported."""

from __future__ import annotations

import os
import sys
import time

import pytest

from spx_testing import ProcessFailed, Processes, ServiceProcess, eventually


def py(code: str, **kw) -> ServiceProcess:
    return ServiceProcess([sys.executable, "-c", code], name="child", **kw)


def test_output_is_read_while_the_process_runs():
    with py("import time; print('ready', flush=True); time.sleep(30)", ok_codes=(-15,)) as p:
        eventually(lambda: "ready" in p.output(), 10, what="output before the process exits")
        assert p.alive()
    assert p.returncode == -15  # a plain script dies of SIGTERM: accepted by ok_codes


def test_a_process_that_ignores_sigterm_is_killed_with_its_children_and_fails_the_block(tmp_path):
    pidfile = tmp_path / "child.pid"
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            f"c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(pidfile)!r}, 'w').write(str(c.pid)); print('up', flush=True); time.sleep(60)")
    p = py(code)
    with pytest.raises(ProcessFailed, match="did not stop on SIGTERM") as info:
        with p:
            p.wait_ready(lambda: pidfile.exists() and "up" in p.output(), 10, what="child started")
            p.stop(timeout_s=0.5)  # the block's own stop: hung, killed
    assert "up" in str(info.value)
    grandchild = int(pidfile.read_text())
    eventually(lambda: not _running(grandchild), 5, what="the grandchild killed with the session")


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_wait_ready_fails_at_once_with_the_output_when_the_process_exits():
    p = py("import sys; print('bad key: SPX_X=1 is not a number', flush=True); sys.exit(2)")
    t0 = time.monotonic()
    with pytest.raises(ProcessFailed) as info:
        with p:
            p.wait_ready(lambda: False, 30, what="never")
    assert time.monotonic() - t0 < 10
    msg = str(info.value)
    assert "exited while waiting for: never" in msg and "bad key: SPX_X=1" in msg and "exit code 2" in msg


def test_the_first_failure_wins_and_carries_every_process_output():
    with pytest.raises(ZeroDivisionError) as info:
        with Processes() as ps:
            ps.run([sys.executable, "-c", "import sys; print('one says hi', flush=True); sys.exit(3)"], name="one")
            two = ps.run([sys.executable, "-c", "import time; print('two', flush=True); time.sleep(30)"], name="two")
            eventually(lambda: "two" in two.output(), 10)
            raise ZeroDivisionError("the test failed")  # not replaced by one exiting 3 in the teardown
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "one says hi" in notes and "exit code 3" in notes and "--- two:" in notes


def test_a_bad_exit_fails_a_passing_block_and_ok_codes_accept_an_expected_one():
    with pytest.raises(ProcessFailed, match="exit code 4"):
        with py("import sys; sys.exit(4)") as p:
            p.wait(10)
    with py("import sys; sys.exit(4)", ok_codes=(4,)) as p:
        assert p.wait(10) == 4
    with py("import time; time.sleep(30)") as p:
        p.kill()  # on purpose: not judged


def test_output_is_bounded_head_and_tail_kept():
    code = "import sys; sys.stdout.write('HEAD' + 'x' * 2_000_000 + 'TAIL'); sys.stdout.flush()"
    with py(code, head_bytes=1000, tail_bytes=4000) as p:
        p.expect_exit(20)
    out = p.output()
    assert out.startswith("HEAD") and out.endswith("TAIL")
    assert len(out) < 6000 and "bytes not kept" in out


def test_service_runs_a_module_of_services_in_the_run_dir(run_dir):
    with ServiceProcess.service("cli.main", run_dir=run_dir, args=["--help"], env={"SPX_X": "1"}) as p:
        p.expect_exit(60)
    assert "usage" in p.output().lower()
    assert p.env["SPX_RUNTIME_RUN_DIR"] == str(run_dir) and p.env["PYTHONUNBUFFERED"] == "1"
    assert os.environ.get("SPX_X") is None


def test_a_process_left_running_is_killed_when_the_interpreter_exits(tmp_path):
    """A run that ends without its teardown (no stop, no ``with``) leaves nothing running."""
    pidfile = tmp_path / "pid"
    code = ("import sys; from spx_testing import ServiceProcess; "
            "p = ServiceProcess([sys.executable, '-c', 'import time; time.sleep(60)']).start(); "
            f"open({str(pidfile)!r}, 'w').write(str(p.pid))")  # and exit without stopping it
    with py(code) as parent:
        parent.expect_exit(30)
    pid = int(pidfile.read_text())
    eventually(lambda: not _running(pid), 5, what="the forgotten child killed at the parent's exit")

"""The entry points' re-run under TCMalloc (mmdiff_jax/tcmalloc.py)."""

import os
import subprocess
import sys

import pytest

from mmdiff_jax import tcmalloc

LIBRARY = "libtcmalloc_minimal.so.4"


def test_added_to_ld_preload_on_linux_unless_preloaded_or_opted_out():
  assert tcmalloc.preload_environment({"HOME": "/h"}, library=LIBRARY, platform="linux") == {
      "HOME": "/h", "LD_PRELOAD": LIBRARY}
  # A user's own preloads stay, first.
  assert tcmalloc.preload_environment({"LD_PRELOAD": "libmine.so"}, library=LIBRARY,
                                      platform="linux")["LD_PRELOAD"] == f"libmine.so {LIBRARY}"
  for environ in ({"LD_PRELOAD": "/opt/lib/libtcmalloc.so.4"}, {tcmalloc.OPT_OUT: "1"}):
    assert tcmalloc.preload_environment(environ, library=LIBRARY, platform="linux") is None
  assert tcmalloc.preload_environment({}, library=LIBRARY, platform="darwin") is None
  assert tcmalloc.preload_environment({tcmalloc.OPT_OUT: "0"}, library=LIBRARY,
                                      platform="linux")["LD_PRELOAD"] == LIBRARY


def test_rerun_executes_the_same_command_with_the_new_environment(monkeypatch):
  calls = []
  monkeypatch.setattr(tcmalloc, "find_tcmalloc", lambda: LIBRARY)
  monkeypatch.setattr(sys, "platform", "linux")
  tcmalloc.rerun_with_tcmalloc(environ={"A": "1"}, execve=lambda *args: calls.append(args))
  assert calls == [(sys.executable, sys.orig_argv, {"A": "1", "LD_PRELOAD": LIBRARY})]
  calls.clear()
  tcmalloc.rerun_with_tcmalloc(environ={"LD_PRELOAD": LIBRARY}, execve=lambda *args: calls.append(args))
  monkeypatch.setattr(tcmalloc, "find_tcmalloc", lambda: None)
  tcmalloc.rerun_with_tcmalloc(environ={}, execve=lambda *args: calls.append(args))
  assert calls == []


def test_missing_hint_only_without_tcmalloc():
  assert "libtcmalloc-minimal4" in tcmalloc.missing_hint({})
  assert tcmalloc.missing_hint({"LD_PRELOAD": LIBRARY}) is None
  assert tcmalloc.missing_hint({tcmalloc.OPT_OUT: "1"}) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux's")
def test_a_fresh_process_reruns_itself_once_under_the_installed_tcmalloc():
  # The README's set-up and .ci/run install it (Debian: libtcmalloc-minimal4).
  assert tcmalloc.find_tcmalloc(), "TCMalloc is not installed: apt-get install libtcmalloc-minimal4"
  env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", tcmalloc.OPT_OUT)}
  code = ("import os; from mmdiff_jax import tcmalloc; print('started', flush=True); "
          "tcmalloc.rerun_with_tcmalloc(); "
          "print('tcmalloc mapped:', 'tcmalloc' in open('/proc/self/maps').read())")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120, check=True).stdout.splitlines()
  # Started twice (the second time under TCMalloc), returned once.
  assert out == ["started", "started", "tcmalloc mapped: True"]
  env[tcmalloc.OPT_OUT] = "1"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120, check=True).stdout.splitlines()
  assert out == ["started", "tcmalloc mapped: False"]
